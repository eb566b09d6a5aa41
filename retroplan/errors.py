"""The one exception type for user mistakes, and the config dataclasses' helpers.

The CLI prints a `UserError` as a single sentence and exits non-zero; anything else is a
bug and keeps its traceback.
"""

import dataclasses


class UserError(Exception):
    """A mistake in what the user asked for: a bad value, a missing file, a corrupt suite."""


def require(condition: bool, message: str) -> None:
    """Raise `UserError(message)` unless `condition` holds."""
    if not condition:
        raise UserError(message)


# Every seed is at most this: the counter-based generator (rng.py), torch.manual_seed and numpy
# take it as a 64-bit integer; one bound for all of them, so a seed is one sentence, not an overflow
SEED_LIMIT = 2**63


def require_seed(value, what: str) -> None:
    """`value` is an integer seed in [0, SEED_LIMIT); else one sentence naming `what`."""
    require(isinstance(value, int) and not isinstance(value, bool) and 0 <= value < SEED_LIMIT,
            f"{what} must be an integer in [0, 2**63), got {value!r}.")


def plain(value):
    """`value` with NumPy scalars (np.int64, np.float32, np.bool_) turned into the Python int,
    float or bool they hold, inside dicts, lists and tuples too: a config built by NumPy code
    is taken as written, and written to JSON as plain numbers."""
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        return value.item()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    return value


_KIND_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def require_field_types(config, what: str) -> None:
    """Every field of the dataclass instance `config` holds a value of its default's type
    (an integer is a fine float; true/false is not an integer). Values from TOML or JSON
    files can be anything; this turns a wrong type into a sentence before any work starts."""
    for f in dataclasses.fields(config):
        if plain(getattr(config, f.name)) is not getattr(config, f.name):  # a NumPy scalar
            object.__setattr__(config, f.name, plain(getattr(config, f.name)))  # frozen ones too
        value, kind = getattr(config, f.name), type(f.default)
        if kind is bool:
            ok = isinstance(value, bool)
        elif kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif kind in (int, str):
            ok = isinstance(value, kind) and not isinstance(value, bool)
        else:
            continue
        require(ok, f"{what} {f.name} must be {_KIND_NAMES[kind]}, got {value!r}.")


def setting(default, help: str):
    """A config dataclass field with its default and what it does, in one place: the sentence
    is the field's documentation and its flag's `--help` (cli.py reads `metadata["help"]`), so
    the two cannot drift. It says what 0 (or an empty value) means and names the choices.
    (`field(default=..., metadata={"help": ...})` is also the Hugging Face HfArgumentParser idiom.)"""
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def help_of(cls, name: str) -> str:
    """What the setting `name` of the config dataclass `cls` does (its `setting` sentence)."""
    return next(f.metadata["help"] for f in dataclasses.fields(cls) if f.name == name)
