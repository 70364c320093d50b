"""Budget-bounded batch LLM routing on Ray.

`import router` is light (numpy and the standard library): Ray, torch, sentence-transformers and
vLLM load only inside the stage or command that needs them.
"""

from router.api import Router
from router.budget import BudgetSolution, InfeasibleBudget, solve_budget
from router.config import ConfigError
from router.method.profiles import Profiles, load_profiles

__all__ = ["BudgetSolution", "ConfigError", "InfeasibleBudget", "Profiles", "Router", "load_profiles", "solve_budget"]
__version__ = "0.1.0"
