"""A search's policy choices: one categorical per layer or group, and parameter counts without building students."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class Choice:
    """One categorical of the search: its key (Optuna name `policy/<key>`), the layers it sets, its ops."""

    key: str
    layers: tuple[str, ...]
    ops: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"policy/{self.key}"


@dataclass(frozen=True)
class PolicyChoices:
    choices: tuple[Choice, ...]
    teacher_params: int
    layer_params: dict[str, dict[str, int]]
    max_params: int | None

    def policy(self, picks: Mapping[str, str]) -> dict[str, str]:
        """`{layer: op}` from `{choice key: op}`."""
        return {layer: picks[c.key] for c in self.choices for layer in c.layers}

    def params(self, policy: Mapping[str, str]) -> int:
        """Student parameters, from the per-layer table."""
        return self.teacher_params + sum(
            self.layer_params[layer][op] - self.layer_params[layer]["keep"] for layer, op in policy.items()
        )

    def feasible(self, policy: Mapping[str, str]) -> bool:
        return self.max_params is None or self.params(policy) <= self.max_params
