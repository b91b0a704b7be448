"""Readable, deterministic genre names and movie titles for the behaviour simulator.

Titles come from fixed word lists per genre, so a demo shows "The Crimson Harbor" rather than
"item 1734", and the same seed always names the same item the same way.
"""

from __future__ import annotations

import numpy as np

# MovieLens-1M's 18 genres, biggest first, each with adjectives and nouns that read like titles of that genre.
_GENRE_WORDS: dict[str, tuple[list[str], list[str]]] = {
    "Drama": ("Quiet Broken Long Crimson Tender Bitter Distant Grey Autumn Fragile".split(),
              "Harbor River Letters Promise Season House Winter Silence Inheritance Shore".split()),
    "Comedy": ("Crazy Awkward Accidental Big Wrong Lazy Perfect Ridiculous Fancy Total".split(),
               "Wedding Roommates Vacation Weekend Neighbors Mixup Reunion Party Detour Interns".split()),
    "Action": ("Iron Burning Silent Final Steel Rogue Savage Hard Deadly Rapid".split(),
               "Strike Fury Protocol Run Target Vendetta Ambush Extraction Blitz Siege".split()),
    "Thriller": ("Fatal Hidden Perfect Deep Blind Double Cold Last Silent Broken".split(),
                 "Trap Witness Hour Conspiracy Pursuit Agent Code Hostage Cover Motive".split()),
    "Romance": ("Sweet Endless Summer Parisian Secret Second Stolen Gentle Blue Lovely".split(),
                "Kiss Heart Affair Valentine Embrace Rose Moonlight Sonnet Dance Letter".split()),
    "Adventure": ("Lost Golden Hidden Endless Wild Forgotten Emerald Sunken Northern Far".split(),
                  "Expedition Treasure Island Voyage Quest Horizon Map Jungle Passage Kingdom".split()),
    "Sci-Fi": ("Quantum Orbital Stellar Synthetic Dark Infinite Binary Cosmic Neural Red".split(),
               "Colony Signal Machine Nebula Android Frontier Station Paradox Eclipse Orbit".split()),
    "Crime": ("Dirty Cold Crooked Black Stolen Bloody Last Double Quiet Easy".split(),
              "Money Heist Score Deal Alibi Syndicate Witness Ledger Precinct Getaway".split()),
    "Horror": ("Hollow Rotting Pale Screaming Hungry Unholy Creeping Drowned Howling Wicked".split(),
               "House Cellar Mask Woods Ritual Harvest Doll Asylum Chapel Bones".split()),
    "Children's": ("Happy Silly Secret Sunny Lucky Curious Giant Merry Noisy Flying".split(),
                   "Puppy Treehouse Summer Pony Club Birthday Kite Circus Pumpkin Picnic".split()),
    "War": ("Bloody Long Last Iron Frozen Burning Brave Fallen Black Distant".split(),
            "Front Battalion Beach Bridge Ridge Trench Convoy Siege Squadron Line".split()),
    "Animation": ("Little Magic Tiny Brave Sparkly Fuzzy Clockwork Bouncing Paper Rainbow".split(),
                  "Robot Dragon Friends Balloon Bunny Garden Toybox Penguin Lantern Acorn".split()),
    "Musical": ("Singing Golden Broadway Dancing Starlit Jazzy Sweet Swinging Velvet Lively".split(),
                "Melody Rhythm Stage Serenade Chorus Ballroom Encore Symphony Tango Overture".split()),
    "Mystery": ("Missing Vanishing Locked Seventh Curious Empty Unknown Scarlet Final Twisted".split(),
                "Clue Key Room Cipher Portrait Manor Riddle Stranger Letter Lighthouse".split()),
    "Fantasy": ("Enchanted Shadow Elder Silver Cursed Crystal Ember Twilight Runic Moonlit".split(),
                "Throne Sword Realm Sorcerer Crown Oracle Citadel Grimoire Wyvern Prophecy".split()),
    "Documentary": ("True Untold Living Human Hidden Changing Modern Ancient Wild Secret".split(),
                    "Planet Story Ocean Voices Frontier Machine Harvest Archive Journey Record".split()),
    "Western": ("Dusty Lonesome Wild Painted Dead Rusty High Broken Desert Outlaw".split(),
                "Trail Canyon Sheriff Ranch Saddle Frontier Gulch Mesa Stagecoach Creek".split()),
    "Film-Noir": ("Dark Smoky Rainy Neon Midnight Deadly Lonely Velvet Bitter Naked".split(),
                  "City Alley Dame Street Verdict Detour Shadow Ledger Glass Cigarette".split()),
}
_BASE_GENRES = tuple(_GENRE_WORDS)
_TEMPLATES = ("The {a} {n}", "{a} {n}", "The {n} of the {a2} {n2}", "{n} at {a2} {n2}")


def genre_names(n_genres: int) -> list[str]:
    """The first ``n_genres`` names, biggest genres first; past 18 the names repeat with a number ("Drama 2")."""
    base = len(_BASE_GENRES)
    return [_BASE_GENRES[g % base] + ("" if g < base else f" {g // base + 1}") for g in range(n_genres)]


def make_titles(primary_genre: np.ndarray, years: np.ndarray, draws: np.ndarray) -> list[str]:
    """One title per item from its primary genre's words: [N] genre indices, [N] years, [N, 5] uniforms in [0, 1).

    The uniforms pick the template and the words, so titles depend only on the caller's seeded draws.
    A title already taken gets its year, as MovieLens does ("The Crimson Harbor (1987)"), then a
    counter; never a numeral, which would hint at a sequel that the hidden world does not have.
    """
    seen: set[str] = set()
    titles = []
    for genre, year, (tpl, a, n, a2, n2) in zip(np.asarray(primary_genre).tolist(), np.asarray(years).tolist(),
                                                np.asarray(draws).tolist()):
        adjectives, nouns = _GENRE_WORDS[_BASE_GENRES[genre % len(_BASE_GENRES)]]
        a, a2 = int(a * len(adjectives)), int(a2 * len(adjectives))
        n, n2 = int(n * len(nouns)), int(n2 * len(nouns))
        if n2 == n:  # "The Key of the Locked Key" reads badly
            n2 = (n2 + 1) % len(nouns)
        base = _TEMPLATES[int(tpl * len(_TEMPLATES))].format(a=adjectives[a], n=nouns[n], a2=adjectives[a2],
                                                             n2=nouns[n2])
        title, count = base, 1
        while title in seen:
            title = f"{base} ({year})" if count == 1 else f"{base} ({year}, {count})"
            count += 1
        seen.add(title)
        titles.append(title)
    return titles
