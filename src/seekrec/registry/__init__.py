"""Model registry: versioned model artifacts that trainers publish and servers load.

Layout under ``root`` (a local directory, or shared storage with POSIX rename and ``flock``)::

    versions/v000001/model.safetensors  weights (safetensors: nothing here is ever pickled)
    versions/v000001/manifest.json      version, kind, created, model name + resolved config, data spec,
                                        metrics, parent, extra, sha256 + size of every other file
    versions/v000001/<extra files>      e.g. an item vocabulary JSON
    CURRENT                             the promoted version, one line
    channels/<name>                     a channel's head, one line (per-arm online learners publish there)
    history.json                        promotion stack (rollback targets) and recent events
    .staging/<host>-<pid>-<hex>/        a publish in progress; readers never look here
    .trash/                             versions being deleted by retention
    .lock                               ``flock`` that serialises CURRENT / history / retention

Why readers never see half an artifact: a version is built and fsynced in ``.staging``, then
renamed into ``versions/`` in one step, and retention renames a version out to ``.trash`` before it
deletes it. Version ids need no lock: ``os.rename`` of a non-empty directory onto an existing
version fails (as ``os.mkdir`` would), so of two concurrent publishers the loser retries with the
next number. ``CURRENT`` is replaced with tempfile + ``os.replace``.

Two parts, composed by ``ModelRegistry`` (``model_registry``): ``store.VersionStore`` owns ``versions/``,
``.staging``, ``.trash``, manifests, checksums and loading; ``pointer.VersionPointer`` owns ``CURRENT``,
``history.json``, pins, rollback and retention; ``artifacts`` checks what is published (a model's
config against its weights, a training run read through ``RunDir``) and formats listings. Every manifest records its ``kind`` (``model``, or a
bundle kind such as ``pipeline``), so readers dispatch on what a version says it is.

Hot swap: a server polls :meth:`ModelRegistry.current`, which reads the one small ``CURRENT`` file,
and calls :meth:`ModelRegistry.load` only when the version it names changes.
"""

from seekrec.registry.artifacts import (
    RegistryError,
    VersionInfo,
    format_manifest,
    format_versions,
    parse_channel,
    parse_version,
)
from seekrec.registry.model_registry import ModelRegistry
from seekrec.registry.store import MODEL_KIND, LoadedBundle, LoadedModel

__all__ = ["MODEL_KIND", "LoadedBundle", "LoadedModel", "ModelRegistry", "RegistryError", "VersionInfo",
           "format_manifest", "format_versions", "parse_channel", "parse_version"]
