"""Hyperparameters that a spec either fixes or hands to Optuna as a search dimension.

A spec value is one of:

* a plain value (``lr: 0.001``): fixed for every trial;
* a range (``lr: {low: 1.0e-5, high: 1.0e-2, log: true}``): a float or int
  dimension, log-uniform when ``log`` is true;
* a list of choices (``optimizer: {choices: [adam, sgd]}``): a categorical dimension.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Union

import optuna

Scalar = Union[bool, int, float, str]
Kind = Literal["float", "int", "str"]


@dataclass(frozen=True)
class Fixed:
    value: Scalar

    def suggest(self, trial: optuna.Trial, name: str) -> Scalar:
        return self.value



@dataclass(frozen=True)
class FloatRange:
    low: float
    high: float
    log: bool = False

    def suggest(self, trial: optuna.Trial, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, log=self.log)



@dataclass(frozen=True)
class IntRange:
    low: int
    high: int
    log: bool = False
    step: int = 1

    def suggest(self, trial: optuna.Trial, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, log=self.log, step=self.step)



@dataclass(frozen=True)
class Choice:
    choices: tuple[Scalar, ...]

    def suggest(self, trial: optuna.Trial, name: str) -> Scalar:
        return trial.suggest_categorical(name, list(self.choices))



Param = Union[Fixed, FloatRange, IntRange, Choice]

_RANGE_KEYS = {"low", "high", "log", "step"}


def parse_param(raw: Any, kind: Kind, allowed: tuple[str, ...] | None = None) -> Param:
    """Turn one spec value into a fixed value or a search dimension.

    Args:
        raw: the value as read from YAML.
        kind: the hyperparameter's type; ranges of ints stay ints.
        allowed: for string hyperparameters, the accepted values.

    Raises:
        ValueError: with the bad value and how to fix it.
    """
    if isinstance(raw, Fixed | FloatRange | IntRange | Choice):
        return raw
    if isinstance(raw, dict):
        keys = set(raw)
        if "choices" in keys:
            if keys != {"choices"}:
                raise ValueError(
                    f"a choice takes only the key 'choices', got keys {sorted(keys)}; "
                    "write {choices: [a, b, ...]}"
                )
            return _parse_choice(raw["choices"], kind, allowed)
        if keys and keys <= _RANGE_KEYS:
            if kind == "str":
                raise ValueError(
                    f"got a range {raw} for a text value; write {{choices: [...]}} instead"
                )
            return _parse_range(raw, kind)
        raise ValueError(
            f"{raw} is neither a range nor a choice; write {{low: .., high: .., log: true}} "
            "or {choices: [...]}, or give a plain value"
        )
    if isinstance(raw, list):
        raise ValueError(f"got a bare list {raw}; write {{choices: {raw}}} to search over it")
    return Fixed(_coerce(raw, kind, allowed))


def _parse_choice(raw: Any, kind: Kind, allowed: tuple[str, ...] | None) -> Choice:
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"'choices' must be a non-empty list, got {raw!r}")
    values = tuple(_coerce(item, kind, allowed) for item in raw)
    if len(set(values)) != len(values):
        raise ValueError(f"'choices' has repeated values: {list(values)}; list each value once")
    return Choice(values)


def _parse_range(raw: dict[str, Any], kind: Kind) -> FloatRange | IntRange:
    missing = {"low", "high"} - set(raw)
    if missing:
        raise ValueError(f"a range needs 'low' and 'high'; {sorted(missing)} missing in {raw}")
    low = _coerce(raw["low"], kind, None)
    high = _coerce(raw["high"], kind, None)
    log = raw.get("log", False)
    if not isinstance(log, bool):
        raise ValueError(f"'log' must be true or false, got {log!r}")
    if not low < high:
        raise ValueError(f"a range needs low < high, got low={low}, high={high}; swap or widen them")
    if log and low <= 0:
        raise ValueError(
            f"a log-scale range needs low > 0, got low={low}; "
            "set low to a small positive value (for example 1.0e-6) or set log: false"
        )
    if kind == "float":
        if "step" in raw:
            raise ValueError("'step' applies to integer ranges only; remove it")
        return FloatRange(float(low), float(high), log)
    step = raw.get("step", 1)
    if not isinstance(step, int) or step < 1:
        raise ValueError(f"'step' must be a positive integer, got {step!r}")
    if log and step != 1:
        raise ValueError("Optuna does not combine log: true with step > 1; drop one of them")
    return IntRange(int(low), int(high), log, step)


def _coerce(value: Any, kind: Kind, allowed: tuple[str, ...] | None) -> Scalar:
    if kind == "float":
        # PyYAML reads 1e-3 (no dot) as text, so accept numeric text.
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"expected a finite number, got {value!r}")
        return number
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected text, got {value!r}")
    if allowed is not None and value not in allowed:
        raise ValueError(f"unknown value {value!r}; use one of {list(allowed)}")
    return value


def check_bounds(param: Param, minimum: float | None, maximum: float | None) -> Param:
    """Raise ValueError if any value the parameter can take lies outside [minimum, maximum]."""
    if isinstance(param, Fixed):
        values = [param.value]
    elif isinstance(param, Choice):
        values = list(param.choices)
    else:
        values = [param.low, param.high]
    for value in values:
        if minimum is not None and value < minimum:
            raise ValueError(f"value {value} is below the minimum {minimum}")
        if maximum is not None and value > maximum:
            raise ValueError(f"value {value} is above the maximum {maximum}")
    return param


def describe(param: Param) -> str:
    """Render a parameter the way a spec would write it, for logs and the parent run."""
    if isinstance(param, Fixed):
        return repr(param.value)
    if isinstance(param, Choice):
        return "choices " + repr(list(param.choices))
    scale = "log" if param.log else "uniform"
    return f"{scale}[{param.low}, {param.high}]"
