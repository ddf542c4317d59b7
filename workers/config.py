"""What one trial runs: the typed trial config, and the validation that makes it.

User input is validated once, where it enters -- a search space (study.space), a file for
`proxstudy train` (:func:`load_train_file`), a Tune ``param_space`` handed to the trainable --
into a frozen :class:`TrialConfig`; the training loop, the models and the data loaders take that
and check nothing again. A typo is reported once, with the file and the dotted field path,
before any work starts (never as a traceback from a Ray worker). Every validator returns a
normalised *copy* (defaults filled in, paths made absolute) and raises :class:`ConfigError`
on the first problem.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import reprlib
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

try:
    from yaml import CSafeLoader as _SafeLoaderBase
except ImportError:  # PyYAML built without libyaml
    from yaml import SafeLoader as _SafeLoaderBase  # type: ignore[assignment]

from proxprop.modes import MODE_KINDS
from proxstudy.errors import ConfigError
from proxstudy.workers.datasets import CATALOG, DATASET_NAMES
from proxstudy.workers.vocabulary import OBJECTIVES, TRAIN_LOSS, VAL_ACCURACY

__all__ = [
    "CG_MODES",
    "DATASET_NAMES",
    "MODEL_NAMES",
    "MODES",
    "MODE_CG",
    "MODE_CG_REF",
    "MODE_EXACT",
    "MODE_GRADIENT",
    "OBJECTIVES",
    "OPTIMIZER_NAMES",
    "ConfigError",
    "FastSafeLoader",
    "TrialConfig",
    "check_device_present",
    "check_model_fits_data",
    "check_objective_fits_model",
    "dataset_input_shape",
    "load_train_file",
    "parse_document_text",
    "read_document_text",
    "require_seed",
    "validate_dataset_spec",
    "validate_device",
    "validate_model_spec",
    "validate_optimizer_spec",
    "validate_training_spec",
    "validate_trial_config",
    "yaml_problem",
]

MODEL_NAMES = ("mlp", "convnet", "autoencoder")
#: A trial's mode: the kinds of the layers' optimization_mode (proxprop.modes), named here.
MODES = MODE_KINDS
MODE_GRADIENT, MODE_EXACT, MODE_CG, MODE_CG_REF = MODES
#: Modes that run CG and so take cg_iterations. prox_cg_ref is the reference release's aliased
#: CG (see ALGORITHM.md), offered only to reproduce the paper's numbers.
CG_MODES = (MODE_CG, MODE_CG_REF)
OPTIMIZER_NAMES = ("sgd", "adam")

DEFAULT_DIVERGENCE_FACTOR = 10.0  # x the initial full-batch loss; see README, "Trials"
DEFAULT_EVAL_BATCH_SIZE = 2000


# --------------------------------------------------------------------------------------------
# small typed checkers (each names the field it checks)


def join_field(field: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{field}[{key}]"
    return f"{field}.{key}" if field else str(key)


def require_mapping(value: Any, source: str, field: str) -> dict:
    if not isinstance(value, Mapping):
        raise ConfigError(source, field, f"must be a mapping, got {show_value(value)}")
    for key in value:
        if not isinstance(key, str):
            raise ConfigError(source, field, f"keys must be strings, got {show_value(key)}")
    return dict(value)


#: Shows at most a few levels and items of a value: an error message must cost microseconds
#: even for a YAML alias bomb (a 1 KB file whose lists expand to billions of items).
_SHOW = reprlib.Repr()
for _name, _limit in (("maxlevel", 3), ("maxlist", 4), ("maxtuple", 4), ("maxdict", 4), ("maxset", 4),
                      ("maxfrozenset", 4), ("maxstring", 60), ("maxother", 60), ("maxlong", 40)):
    setattr(_SHOW, _name, _limit)


def show_value(value: Any, limit: int = 60) -> str:
    """A short, bounded ``repr`` of a value for an error message (cost bounded whatever its size)."""
    text = _SHOW.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_keys(doc: Mapping, allowed: Sequence[str], source: str, field: str) -> None:
    for key in doc:
        if key not in allowed:
            raise ConfigError(
                source,
                join_field(field, key),
                f"unknown key (allowed: {', '.join(sorted(allowed))})",
            )


def require_int(value: Any, source: str, field: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ConfigError(source, field, f"must be an integer, got {show_value(value)}")
    if minimum is not None and value < minimum:
        raise ConfigError(source, field, f"must be >= {minimum}, got {value}")
    return int(value)


def require_float(
    value: Any,
    source: str,
    field: str,
    *,
    positive: bool = False,
    nonnegative: bool = False,
    below: float | None = None,
) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, str):
            try:  # YAML 1.1 reads "1e-3" (no dot) as a string; accept it as a number.
                value = float(value)
            except ValueError:
                raise ConfigError(source, field, f"must be a number, got {show_value(value)}") from None
        else:
            raise ConfigError(source, field, f"must be a number, got {show_value(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError(source, field, f"must be finite, got {value}")
    if positive and value <= 0:
        raise ConfigError(source, field, f"must be > 0, got {value}")
    if nonnegative and value < 0:
        raise ConfigError(source, field, f"must be >= 0, got {value}")
    if below is not None and value >= below:
        raise ConfigError(source, field, f"must be < {below}, got {value}")
    return value


#: torch.manual_seed takes seeds in [0, 2**64).
MAX_SEED = 2**64


def require_seed(value: Any, source: str, field: str) -> int:
    """A seed torch accepts: an integer in [0, 2**64)."""
    seed = require_int(value, source, field, 0)
    if seed >= MAX_SEED:
        raise ConfigError(source, field, f"a seed must be < 2**64 (torch's limit), got {show_value(seed)}")
    return seed


def require_bool(value: Any, source: str, field: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(source, field, f"must be true or false, got {show_value(value)}")
    return value


def require_str(value: Any, source: str, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(source, field, f"must be a non-empty string, got {show_value(value)}")
    return value


def _choice(value: Any, choices: Sequence[str], source: str, field: str) -> str:
    if value not in choices:
        raise ConfigError(
            source, field, f"must be one of {', '.join(choices)}, got {show_value(value)}"
        )
    return value


def _int_list(value: Any, source: str, field: str, minimum: int = 1, min_len: int = 1) -> list[int]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ConfigError(source, field, f"must be a list of integers, got {show_value(value)}")
    if len(value) < min_len:
        raise ConfigError(source, field, f"must have at least {min_len} entries")
    return [require_int(v, source, join_field(field, i), minimum) for i, v in enumerate(value)]


def _require(doc: Mapping, key: str, source: str, field: str) -> Any:
    if key not in doc or doc[key] is None:
        raise ConfigError(source, join_field(field, key), "is required")
    return doc[key]


def _md5(value: Any, source: str, field: str) -> str:
    text = require_str(value, source, field).lower()
    if len(text) != 32 or any(c not in "0123456789abcdef" for c in text):
        raise ConfigError(source, field, "must be an md5 hex digest (32 hex digits)")
    return text


def _root(value: Any, source: str, field: str) -> str:
    """Absolute data root: Ray workers run in their own working directory, so a relative path
    must be resolved where the user wrote it (the driver), not where the trial runs."""
    if value is None:
        value = os.environ.get("PROXSTUDY_DATA", "data")
    return str(Path(require_str(value, source, field)).expanduser().absolute())


# --------------------------------------------------------------------------------------------
# data sets

def validate_dataset_spec(spec: Any, source: str, field: str = "dataset") -> dict:
    """Normalised dataset spec; the options of each set are in workers.datasets' catalog,
    what they do in workers/data.py."""
    doc = require_mapping(spec, source, field)
    name = _choice(_require(doc, "name", source, field), DATASET_NAMES, source, join_field(field, "name"))
    info = CATALOG[name]
    check_keys(doc, ("name", *info.options), source, field)
    out: dict[str, Any] = {"name": name}
    if name == "digits":
        out["val_fraction"] = require_float(
            doc.get("val_fraction", 0.2), source, join_field(field, "val_fraction"), positive=True, below=1.0
        )
    elif name == "synthetic":
        out["n_train"] = require_int(doc.get("n_train", 512), source, join_field(field, "n_train"), 1)
        out["n_val"] = require_int(doc.get("n_val", 128), source, join_field(field, "n_val"), 1)
        out["input_shape"] = _int_list(
            doc.get("input_shape", [1, 8, 8]), source, join_field(field, "input_shape")
        )
        out["num_classes"] = require_int(doc.get("num_classes", 10), source, join_field(field, "num_classes"), 2)
        out["seed"] = require_int(doc.get("seed", 0), source, join_field(field, "seed"))
    else:  # file-backed: files under root
        out["root"] = _root(doc.get("root"), source, join_field(field, "root"))
        out["download"] = require_bool(doc.get("download", False), source, join_field(field, "download"))
        if doc.get("url") is not None:
            out["url"] = require_str(doc["url"], source, join_field(field, "url"))
        if doc.get("md5") is not None:
            out["md5"] = _validate_md5_option(name, doc["md5"], source, join_field(field, "md5"))
        out["val_size"] = require_int(
            doc.get("val_size", info.default_val_size), source, join_field(field, "val_size"), 1
        )
    if doc.get("train_samples") is not None:
        out["train_samples"] = require_int(doc["train_samples"], source, join_field(field, "train_samples"), 1)
    return out


def _validate_md5_option(name: str, value: Any, source: str, field: str) -> dict[str, str]:
    """md5 override: a digest (cifar10: the archive) or {file name: digest} (usps: two files)."""
    files = CATALOG[name].download_files
    if isinstance(value, str):
        if len(files) != 1:
            raise ConfigError(
                source, field, f"{name} has several files; give a mapping {{file name: md5}} for {', '.join(files)}"
            )
        return {files[0]: _md5(value, source, field)}
    doc = require_mapping(value, source, field)
    check_keys(doc, files, source, field)
    return {k: _md5(v, source, join_field(field, k)) for k, v in doc.items()}


def dataset_input_shape(spec: Mapping) -> tuple[int, ...]:
    """Per-sample input shape of a *validated* dataset spec, known without loading any file."""
    shape = CATALOG[spec["name"]].input_shape
    return tuple(spec["input_shape"]) if shape is None else shape


# --------------------------------------------------------------------------------------------
# models


def validate_model_spec(spec: Any, source: str, field: str = "model") -> dict:
    """Normalised model spec; see workers/models.py."""
    doc = require_mapping(spec, source, field)
    name = _choice(_require(doc, "name", source, field), MODEL_NAMES, source, join_field(field, "name"))
    out: dict[str, Any] = {"name": name}
    if name == "mlp":
        check_keys(doc, ("name", "hidden"), source, field)
        out["hidden"] = _int_list(doc.get("hidden", [64, 64]), source, join_field(field, "hidden"))
    elif name == "convnet":
        check_keys(doc, ("name", "channels", "kernel_size"), source, field)
        out["channels"] = _int_list(doc.get("channels", [16, 20, 20]), source, join_field(field, "channels"))
        kernel = require_int(doc.get("kernel_size", 5), source, join_field(field, "kernel_size"), 1)
        if kernel % 2 == 0:
            raise ConfigError(source, join_field(field, "kernel_size"), f"must be odd ('same' padding), got {kernel}")
        out["kernel_size"] = kernel
    else:
        check_keys(doc, ("name", "hidden", "output"), source, field)
        out["hidden"] = _int_list(doc.get("hidden", [64, 16]), source, join_field(field, "hidden"))
        out["output"] = _choice(doc.get("output", "sigmoid"), ("sigmoid", "linear"), source,
                                join_field(field, "output"))
    return out


# --------------------------------------------------------------------------------------------
# optimizers

_OPTIMIZER_FIELDS = {
    "sgd": ("momentum", "dampening", "weight_decay", "nesterov", "maximize"),
    "adam": ("betas", "eps", "weight_decay", "amsgrad", "maximize"),
}


def validate_optimizer_spec(spec: Any, source: str, field: str = "optimizer") -> dict:
    """{name: sgd|adam, ...torch.optim fields}; lr is the trial's top-level lr."""
    doc = require_mapping(spec, source, field)
    name = _choice(_require(doc, "name", source, field), OPTIMIZER_NAMES, source, join_field(field, "name"))
    if "lr" in doc:
        raise ConfigError(source, join_field(field, "lr"),
                          "set the learning rate as the method's lr, not inside optimizer")
    check_keys(doc, ("name",) + _OPTIMIZER_FIELDS[name], source, field)
    out: dict[str, Any] = {"name": name}
    for key, value in doc.items():
        sub = join_field(field, key)
        if key == "name":
            continue
        if key in ("nesterov", "amsgrad", "maximize"):
            out[key] = require_bool(value, source, sub)
        elif key == "betas":
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
                raise ConfigError(source, sub, f"must be a pair [beta1, beta2], got {show_value(value)}")
            out[key] = [require_float(b, source, join_field(sub, i), nonnegative=True, below=1.0)
                        for i, b in enumerate(value)]
        elif key == "eps":
            out[key] = require_float(value, source, sub, positive=True)
        else:  # momentum, dampening, weight_decay
            out[key] = require_float(value, source, sub, nonnegative=True)
    if out.get("nesterov") and (out.get("momentum", 0.0) <= 0 or out.get("dampening", 0.0) != 0):
        raise ConfigError(source, join_field(field, "nesterov"), "needs momentum > 0 and dampening 0")
    return out


# --------------------------------------------------------------------------------------------
# whole trial config


def validate_device(value: Any, source: str, field: str) -> str:
    text = require_str(value, source, field)
    if text in ("auto", "cpu", "cuda"):
        return text
    if text.startswith("cuda:") and text[5:].isdigit():
        return text
    raise ConfigError(source, field, f"must be auto, cpu, cuda or cuda:N, got {show_value(value)}")


def check_device_present(device: str, gpus: float, source: str, field: str) -> None:
    """A validated device string against the GPUs there are (``gpus``: how many CUDA devices
    the trials can see): asking for CUDA where there is none fails here, not in every trial."""
    if not device.startswith("cuda"):
        return
    if gpus < 1:
        raise ConfigError(source, field, f"{device} asked for, but no CUDA device is available; use cpu or auto")
    if device.startswith("cuda:") and int(device[5:]) >= gpus:
        raise ConfigError(source, field, f"{device} asked for, but there are only {int(gpus)} CUDA device(s) "
                          f"(cuda:0 to cuda:{int(gpus) - 1})")


@dataclass(frozen=True)
class TrialConfig:
    """One trial, validated (docs/INTERFACES.md "Trial config"); made by
    :func:`validate_trial_config` or, from a validated search space, ``study.space.trial_config``.

    The nested specs are the normalised dicts of the ``validate_*_spec`` functions.
    """

    dataset: dict[str, Any]
    model: dict[str, Any]
    training: dict[str, Any]  # epochs, batch_size, divergence_factor, eval_batch_size, drop_last
    objective: str  # one of OBJECTIVES
    method: str  # the arm's name in the search space, a label
    mode: str  # one of MODES
    lr: float
    tau_prox: float | None  # the prox modes; None for gradient
    cg_iterations: int | None  # the CG modes; None otherwise
    optimizer: dict[str, Any]  # {name: sgd|adam, ...torch.optim fields}
    seed: int
    device: str = "auto"  # auto | cpu | cuda | cuda:N

    @property
    def layer_mode(self) -> str:
        """The ProxProp layers' optimization_mode string (proxprop.parse_mode's inverse)."""
        if self.mode == MODE_CG:
            return f"prox_cg{self.cg_iterations}"
        if self.mode == MODE_CG_REF:
            return f"prox_cg{self.cg_iterations}_ref"
        return self.mode

    def to_dict(self) -> dict[str, Any]:
        """The plain, JSON-able trial config (what export files hold)."""
        return dataclasses.asdict(self)

    def with_device(self, device: str) -> TrialConfig:
        """The same trial on another (validated) device."""
        return dataclasses.replace(self, device=device)


_TRIAL_KEYS = tuple(f.name for f in dataclasses.fields(TrialConfig))
_TRAINING_KEYS = ("epochs", "batch_size", "divergence_factor", "eval_batch_size", "drop_last", "seeds")


def validate_training_spec(spec: Any, source: str, field: str = "training") -> dict:
    doc = require_mapping(spec, source, field)
    check_keys(doc, _TRAINING_KEYS, source, field)
    def at(key: str) -> str:
        return join_field(field, key)

    out = {
        "epochs": require_int(_require(doc, "epochs", source, field), source, at("epochs"), 1),
        "batch_size": require_int(_require(doc, "batch_size", source, field), source, at("batch_size"), 1),
        "divergence_factor": require_float(
            doc.get("divergence_factor", DEFAULT_DIVERGENCE_FACTOR), source, at("divergence_factor"), positive=True
        ),
        "eval_batch_size": require_int(
            doc.get("eval_batch_size", DEFAULT_EVAL_BATCH_SIZE), source, at("eval_batch_size"), 1
        ),
        "drop_last": require_bool(doc.get("drop_last", False), source, at("drop_last")),
    }
    if out["divergence_factor"] <= 1.0:
        raise ConfigError(source, at("divergence_factor"), "must be > 1 (a multiple of the initial loss)")
    # `seeds` belongs to the search space (one trial per seed); a trial runs its own `seed`.
    return out


def check_objective_fits_model(objective: str, model: Mapping, source: str) -> None:
    if objective == VAL_ACCURACY and model["name"] == "autoencoder":
        raise ConfigError(source, "objective", f"an autoencoder has no accuracy; use {TRAIN_LOSS}")


def check_model_fits_data(model: Mapping, dataset: Mapping, source: str) -> None:
    """A convnet needs image-shaped inputs that its two max-poolings do not shrink to nothing."""
    if model["name"] != "convnet":
        return
    shape = dataset_input_shape(dataset)
    if len(shape) != 3:
        raise ConfigError(
            source, "model.name", f"convnet needs (channels, height, width) inputs, the data set gives {list(shape)}"
        )
    height, width = shape[1], shape[2]
    for _ in range(min(2, len(model["channels"]))):  # max-pooling after the first two convs
        height, width = height // 2, width // 2
    if height < 1 or width < 1:
        raise ConfigError(source, "model.name", f"convnet pools {list(shape)} inputs down to nothing")


def validate_trial_config(doc: Any, source: str) -> TrialConfig:
    """A whole trial config (INTERFACES.md) from a mapping. Keys starting with "_" are the
    sweep's bookkeeping beside a trial config in a Tune config: allowed, and not part of the
    trial."""
    doc = require_mapping(doc, source, "")
    check_keys({k: v for k, v in doc.items() if not k.startswith("_")}, _TRIAL_KEYS, source, "")
    dataset = validate_dataset_spec(_require(doc, "dataset", source, ""), source, "dataset")
    model = validate_model_spec(_require(doc, "model", source, ""), source, "model")
    training = validate_training_spec(_require(doc, "training", source, ""), source, "training")
    objective = _choice(_require(doc, "objective", source, ""), OBJECTIVES, source, "objective")
    check_objective_fits_model(objective, model, source)
    method = require_str(_require(doc, "method", source, ""), source, "method")
    mode = _choice(_require(doc, "mode", source, ""), MODES, source, "mode")
    lr = require_float(_require(doc, "lr", source, ""), source, "lr", positive=True)
    tau = doc.get("tau_prox")
    if mode != MODE_GRADIENT and tau is None:
        raise ConfigError(source, "tau_prox", f"is required for mode {mode}")
    tau_prox = None if tau is None else require_float(tau, source, "tau_prox", positive=True)
    cg = doc.get("cg_iterations")
    if mode in CG_MODES and cg is None:
        raise ConfigError(source, "cg_iterations", f"is required for mode {mode}")
    cg_iterations = None if cg is None else require_int(cg, source, "cg_iterations", 1)
    optimizer = validate_optimizer_spec(_require(doc, "optimizer", source, ""), source, "optimizer")
    seed = require_seed(_require(doc, "seed", source, ""), source, "seed")
    device = validate_device(doc.get("device", "auto"), source, "device")
    check_model_fits_data(model, dataset, source)
    return TrialConfig(dataset=dataset, model=model, training=training, objective=objective, method=method,
                       mode=mode, lr=lr, tau_prox=tau_prox, cg_iterations=cg_iterations, optimizer=optimizer,
                       seed=seed, device=device)


# --------------------------------------------------------------------------------------------
# files for `proxstudy train`


#: A search space or trial config is a small text file; more is a mistake (or /dev/zero).
MAX_DOCUMENT_BYTES = 1 << 20


def read_document_text(path: str | os.PathLike[str], source: str) -> str:
    """The text of a YAML/JSON input file, read with a bound: ConfigError naming ``source`` for
    a missing, unreadable, binary, oversized or non-regular file (a device, a pipe)."""
    try:
        info = os.stat(path)
        if stat.S_ISDIR(info.st_mode):
            raise ConfigError(source, "", "is a directory, not a file")
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(source, "", "is not a regular file (a device or a pipe?)")
        with open(path, "rb") as handle:
            data = handle.read(MAX_DOCUMENT_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(source, "", "file not found") from None
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_DOCUMENT_BYTES:
        raise ConfigError(source, "", f"is larger than {MAX_DOCUMENT_BYTES // 1024} KiB; expected a small text file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(source, "", f"is not a UTF-8 text file (byte {exc.start} cannot be decoded)") from None


def yaml_problem(exc: Exception) -> str:
    """What a YAML (or JSON) parse error says, with its line and column, on one line."""
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno}, column {exc.colno}"
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
    if mark is None:
        return problem
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"


#: Brackets deeper than this are refused before parsing: PyYAML's scanner takes time quadratic
#: in the depth of flow collections (a 6 KB "[[[[..." takes seconds), and no input here needs
#: more than a handful of levels.
MAX_NESTING = 100


def _flow_depth_over(text: str, limit: int) -> bool:
    """Whether ``[``/``{`` nest deeper than ``limit`` outside quotes and comments (one pass)."""
    depth = 0
    quote = ""
    previous = "\n"
    index, end = 0, len(text)
    while index < end:
        char = text[index]
        if quote:
            if char == quote:
                quote = ""
        elif char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth = max(0, depth - 1)
        elif char in "'\"" and (previous in " \t\n[{,:"):
            quote = char
        elif char == "#" and previous in " \t\n":
            newline = text.find("\n", index)
            index = end if newline < 0 else newline
            previous = "\n"
            continue
        previous = char
        index += 1
    return False


class FastSafeLoader(_SafeLoaderBase):
    """PyYAML's safe loader on libyaml's parser where it is installed (the wheels have it): the
    pure-Python parser takes seconds for a 500 KB file, libyaml a tenth of that."""


def parse_document_text(text: str, source: str, *, json_file: bool = False,
                        loader: type[FastSafeLoader] = FastSafeLoader) -> Any:
    """YAML (or JSON) text into plain data; ConfigError naming ``source`` with the line and
    column of a syntax error, or for nesting too deep to parse."""
    kind = "JSON" if json_file else "YAML"
    if _flow_depth_over(text, MAX_NESTING):
        raise ConfigError(source, "", f"the {kind} is nested too deeply (more than {MAX_NESTING} levels of brackets)")
    try:
        if json_file:
            return json.loads(text)
        return yaml.load(text, Loader=loader)  # a SafeLoader or a subclass of it
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(source, "", f"not valid {kind}: {yaml_problem(exc)}") from None
    except RecursionError:
        raise ConfigError(source, "", f"the {kind} is nested too deeply") from None


def _read_document(path: Path) -> Any:
    source = str(path)
    return parse_document_text(read_document_text(path, source), source,
                               json_file=path.suffix.lower() == ".json")


EXPORT_PICKS = ("best", "robust")


def _export_pick(entry: Mapping, pick: str | None, source: str, field: str) -> tuple[Mapping, str]:
    """The chosen configuration of one method of an export file, and its field path.

    A method entry holds ``best`` and/or ``robust`` (each with a ``trial_config``); an entry
    with a ``trial_config`` of its own (files of earlier versions) is its best configuration.
    """
    if "trial_config" in entry:
        if pick not in (None, "best"):
            raise ConfigError(source, "--pick", f"{field} has only its best configuration, not {pick!r}")
        return entry, field
    present = [kind for kind in EXPORT_PICKS if kind in entry]
    if not present:
        raise ConfigError(source, field, "has neither a best nor a robust configuration")
    if pick is None:
        if len(present) > 1:
            raise ConfigError(source, "--pick", f"{field} has the best and the most robust configuration; "
                                                "choose one with --pick best or --pick robust")
        pick = present[0]
    if pick not in present:
        raise ConfigError(source, "--pick", f"{field} has no {pick} configuration (it has: {', '.join(present)})")
    return require_mapping(entry[pick], source, join_field(field, pick)), join_field(field, pick)


def load_train_file(path: str | os.PathLike, method: str | None = None,
                    pick: str | None = None) -> list[TrialConfig]:
    """Trial configs to run from a bare trial config or an export file (every method in the
    file's order when `method` is None; of each, the configuration `pick` -- "best" or
    "robust" -- which may be left out only where the file has one; see :func:`_export_pick`)."""
    path = Path(path)
    source = str(path)
    doc = _read_document(path)
    doc = require_mapping(doc, source, "")
    if "methods" not in doc:
        config = validate_trial_config(doc, source)
        if method is not None and method != config.method:
            raise ConfigError(source, "method", f"the file runs method {config.method!r}, not {method!r}")
        if pick is not None:
            raise ConfigError(source, "--pick", "a trial config has one configuration; --pick is for export files")
        return [config]
    methods = require_mapping(doc["methods"], source, "methods")
    if not methods:
        raise ConfigError(source, "methods", "no methods in the export file")
    if method is not None:
        if method not in methods:
            raise ConfigError(source, "methods", f"no method {method!r} (the file has: {', '.join(methods)})")
        names = [method]
    else:
        names = list(methods)
    configs = []
    for name in names:
        entry, where = _export_pick(require_mapping(methods[name], source, join_field("methods", name)),
                                    pick, source, join_field("methods", name))
        field = join_field(where, "trial_config")
        trial = require_mapping(_require(entry, "trial_config", source, where), source, field)
        try:
            configs.append(validate_trial_config(trial, source))
        except ConfigError as exc:  # re-anchor the field inside the export file
            raise ConfigError(source, join_field(field, exc.field) if exc.field else field, exc.message) from None
    return configs
