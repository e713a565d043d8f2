"""Common pieces of every policy: the named decision and the validation error."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Self


class PolicyError(ValueError):
    """A policy setting is invalid; `key` names the setting, for the start-up message."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one policy check: allowed or not, and the reason code why.

    `params` are the numbers the reason's message needs ("at least %(min)d characters"). They
    come from the policy's settings, never from what was judged: whole numbers only, so that a
    decision can be shown, logged and audited without leaking a password or a list entry.
    """

    allowed: bool
    reason: str
    params: tuple[tuple[str, int], ...] = ()

    @classmethod
    def allow(cls, reason: str = "ok") -> Decision:
        return cls(True, reason)

    @classmethod
    def deny(cls, reason: str, **params: int) -> Decision:
        return cls(False, reason, tuple(sorted(params.items())))

    @property
    def message_params(self) -> dict[str, int]:
        return dict(self.params)

    def __bool__(self) -> bool:
        return self.allowed


class Policy:
    """Mixin for frozen dataclass policies: validation on construction, `clone`, `from_mapping`."""

    section: str = ""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:  # pragma: no cover - overridden where there is something to check
        pass

    def clone(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    @classmethod
    def from_mapping(cls, data: dict[str, Any], prefix: str) -> Self:
        """Build from a TOML table, refusing unknown keys and values of the wrong type."""
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key not in fields:
                raise PolicyError(f"{prefix}.{key}", "unknown setting")
            expected = type(getattr(cls(), key))
            if expected is int and (isinstance(value, bool) or not isinstance(value, int)):
                raise PolicyError(f"{prefix}.{key}", f"must be a whole number, not {value!r}")
            if expected is bool and not isinstance(value, bool):
                raise PolicyError(f"{prefix}.{key}", f"must be true or false, not {value!r}")
            if expected is tuple:
                if not isinstance(value, list | tuple):
                    raise PolicyError(f"{prefix}.{key}", f"must be a list, not {value!r}")
                value = tuple(value)  # TOML arrays arrive as lists; policies stay immutable
            values[key] = value
        try:
            return cls(**values)
        except PolicyError as error:
            raise PolicyError(f"{prefix}.{error.key}", error.message) from None


def require_range(key: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise PolicyError(key, f"must be between {low} and {high}, not {value}")
