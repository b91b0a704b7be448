"""`seekrec demo`: simulator -> initial model -> server + online trainer -> live A/B test -> report."""
