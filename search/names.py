"""Names of the searchers: what a space may say, without importing Ray or Optuna (the costs: `data.names`)."""
from __future__ import annotations

from typing import Literal, get_args

Searcher = Literal["tpe", "random", "nsga2", "library"]
SEARCHERS: tuple[str, ...] = get_args(Searcher)
LIBRARY = "library"  # the searcher that refits the plug library's predictor (search.library_search)
