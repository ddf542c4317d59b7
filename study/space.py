"""Search spaces: load and validate a sweep definition, enumerate its grid, build trial configs.

A search-space YAML (DESIGN.md, "Search-space YAML") is checked completely before any trial
starts, so a typo costs one clear message (``"<file>: <field.path>: <what is wrong>"``, a
:class:`~proxstudy.errors.ConfigError`) instead of a crashed sweep. The data-set, model,
optimizer and training rules are those of :mod:`workers.config`, the same code that checks a
single trial, so the two can never disagree. This is where a sweep's input is validated, once:
:func:`trial_config` builds the typed trial config of any point of a validated space without
checking anything again.

Document (top-level keys; anything else is an error naming the allowed keys)::

    study:     non-empty string (the Optuna study name)                        required
    dataset:   workers.config dataset spec                                     required
    model:     workers.config model spec                                       required
    training:  {epochs, batch_size, seeds, divergence_factor, eval_batch_size, drop_last}
               epochs and batch_size required; seeds defaults to [0]
    sampler:   grid (default) | {name: grid} | {name: random|tpe, n_trials: N, seed: S}
    objective: train_loss (default, minimised) | val_accuracy (maximised)
    methods:   {NAME: method}, at least one                                    required

A method: ``mode`` (gradient | prox_exact | prox_cg | prox_cg_ref, the last the reference
release's aliased CG, for reproducing the paper), ``lr`` (required), ``tau_prox`` (required
for the prox modes, an error for gradient), ``cg_iterations`` (required for prox_cg, an error
otherwise), ``optimizer`` ({name: sgd|adam, fields}; default ``{name: sgd}``, plain SGD).

Decisions on the open points (kept here because users and the sweep runner rely on them):

* Swept values. lr, tau_prox, cg_iterations and optimizer fields take a scalar (fixed), a
  non-empty list of distinct values (choices) or a range ``{low, high, log: false, points}``.
  Ranges need ``low < high`` (a single value is written as a scalar) and ``points >= 2``;
  ``log: true`` needs ``low > 0``. ``points`` is required with the grid sampler and optional
  with random/tpe (the range is then a distribution). Grid values are evenly spaced (in log
  space for log ranges), rounded to 12 significant digits so that point keys read ``0.01``
  rather than ``0.010000000000000002``; the endpoints are exactly low and high. Integer
  parameters (cg_iterations) need integer bounds; their grid values are rounded and a range
  whose rounded values would repeat is an error (use fewer points or a list).
  ``optimizer.betas`` is a pair and is never swept; ``optimizer.name`` is never swept.
* Seeds. ``training.seeds`` is a non-empty list of distinct integers >= 0, or an integer
  N >= 1 meaning ``[0, ..., N-1]``; the document always holds the list.
* Sampler. The grid sampler takes no other key (``n_trials`` or ``seed`` there is an error,
  since the grid runs every point once per seed). random/tpe require ``n_trials >= 1`` and
  take ``seed`` (default 0, so a sampled sweep is reproducible).
* Method names are non-empty strings without ``|`` or ``=`` (they are part of point keys).
* Recorded params. A point's ``params`` (the Optuna params besides method and seed) are
  ``lr`` always, ``tau_prox`` for the prox modes, ``cg_iterations`` for the CG modes (even when
  fixed, so that every trial of a study can be compared on the same axes), and
  ``optimizer.<field>`` only where that field is swept (a list or a range). Fixed optimizer
  fields are part of :attr:`MethodSpace.optimizer` only.
* Grid order (:func:`grid_points`): seed outermost, then methods in document order, then the
  cartesian product of the method's params in the order lr, tau_prox, cg_iterations,
  optimizer fields (document order), the last varying fastest. With seeds outermost a
  partially run sweep already holds every method's whole grid for the first seed(s), so the
  robustness table fills in early and is refined by later seeds.
* Distributions. :func:`recorded_distributions` gives one distribution per Optuna param name
  for the whole study (Optuna insists on one kind and log flag per name): ``method`` a
  categorical of the method names, ``seed`` an int range, lr/tau_prox log-float ranges,
  cg_iterations an int range, optimizer fields a float range (numbers) or a categorical (true/
  false or strings), each spanning every method's values. With the random/tpe samplers each
  method's :meth:`Param.optuna_distribution` (what the sampler draws from) must be compatible
  with the other methods' for the same name; the loader checks this and the recorded
  distribution then has the same kind and log flag (a linear lr range gives a linear lr).
* The normalised :attr:`SearchSpace.document` has every default filled in, is JSON-able and
  parses back to itself (``parse_space(space.document).document == space.document``), so the
  runner can store it in the study and compare it on resume. Relative data roots are made
  absolute (where the command runs) by workers.config.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import yaml
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    check_distribution_compatibility,
)
from optuna.study import StudyDirection

from proxstudy.errors import ConfigError
from proxstudy.study.records import (
    OPTIMIZER_PARAM_PREFIX,
    PARAM_CG,
    PARAM_LR,
    PARAM_METHOD,
    PARAM_SEED,
    PARAM_TAU,
    point_key,
)
from proxstudy.workers.config import (
    CG_MODES,
    MODE_GRADIENT,
    MODES,
    FastSafeLoader,
    TrialConfig,
    check_keys,
    check_model_fits_data,
    check_objective_fits_model,
    join_field,
    parse_document_text,
    read_document_text,
    require_bool,
    require_float,
    require_int,
    require_mapping,
    require_seed,
    require_str,
    show_value,
    validate_dataset_spec,
    validate_model_spec,
    validate_optimizer_spec,
    validate_training_spec,
)
from proxstudy.workers.vocabulary import DIRECTION_OF_OBJECTIVE, MAXIMIZE, OBJECTIVES, TRAIN_LOSS

__all__ = [
    "SAMPLERS",
    "MethodSpace",
    "Param",
    "Point",
    "SearchSpace",
    "as_search_space",
    "check_study_name",
    "check_trial_count",
    "grid_points",
    "load_space",
    "max_trials",
    "parse_space",
    "recorded_distributions",
    "trial_config",
]

SAMPLERS = ("grid", "random", "tpe")
TOP_LEVEL_KEYS = ("study", "dataset", "model", "training", "sampler", "objective", "methods")
METHOD_KEYS = ("mode", "lr", "tau_prox", "cg_iterations", "optimizer")
RANGE_KEYS = ("low", "high", "log", "points")
#: Optimizer fields that are never swept (a list there is the value itself, or meaningless).
UNSWEPT_OPTIMIZER_FIELDS = ("name", "betas")
#: Significant digits kept in grid values (see the module docstring).
GRID_DIGITS = 12
#: The scale of the method params when nothing in the space says otherwise.
_DEFAULT_LOG = {PARAM_LR: True, PARAM_TAU: True, PARAM_CG: False}


# --------------------------------------------------------------------------------------------
# data classes


@dataclass(frozen=True)
class Param:
    """One trial parameter of one method: fixed, a list of choices, or a range."""

    name: str  # "lr", "tau_prox", "cg_iterations", "optimizer.momentum", ...
    kind: str  # "fixed" | "choice" | "range"
    values: tuple  # fixed: (value,); choice: the choices; range: the grid (empty without points)
    low: float | None = None
    high: float | None = None
    log: bool = False
    points: int | None = None
    integer: bool = False

    @property
    def bounds(self) -> tuple[float, float]:
        """(low, high) of a range."""
        if self.low is None or self.high is None:
            raise ValueError(f"{self.name}: a {self.kind} param has no bounds")
        return self.low, self.high

    def grid_values(self) -> list:
        """The values the grid sampler runs (ranges need ``points``)."""
        if self.kind == "range" and self.points is None:
            raise ValueError(f"{self.name}: a range without points has no grid")
        return list(self.values)

    def optuna_distribution(self) -> BaseDistribution:
        """What a random/tpe sampler draws this param from (compatible across methods, see
        the module docstring)."""
        if self.kind == "range":
            low, high = self.bounds
            if self.integer:
                return IntDistribution(int(low), int(high), log=self.log)
            return FloatDistribution(float(low), float(high), log=self.log)
        if self.kind == "fixed":
            value = self.values[0]
            if _is_number(value):
                if self.integer:
                    return IntDistribution(int(value), int(value), log=self.log)
                return FloatDistribution(float(value), float(value), log=self.log)
        return CategoricalDistribution(list(self.values))

    def to_document(self) -> Any:
        """The normalised YAML/JSON form (scalar, list or range mapping)."""
        if self.kind == "fixed":
            return self.values[0]
        if self.kind == "choice":
            return list(self.values)
        return {"low": self.low, "high": self.high, "log": self.log, "points": self.points}


@dataclass(frozen=True)
class MethodSpace:
    """One arm of the comparison: its mode, its params and its optimizer's fixed fields."""

    name: str
    mode: str  # "gradient" | "prox_exact" | "prox_cg" | "prox_cg_ref"
    params: dict[str, Param]  # the params Optuna records for this method (see module doc)
    optimizer: dict  # the optimizer's fixed (non-swept) fields, "name" included


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space; ``document`` is what the study stores."""

    source: str
    study_name: str
    document: dict
    dataset: dict
    model: dict
    training: dict  # epochs, batch_size and the other workers training options (no seeds)
    seeds: tuple[int, ...]
    sampler: dict  # {name: grid} | {name: random|tpe, n_trials: int, seed: int}
    objective: str
    direction: str  # "minimize" | "maximize"
    methods: dict[str, MethodSpace]

    @property
    def study_direction(self) -> StudyDirection:
        """The direction as Optuna takes it."""
        return StudyDirection.MAXIMIZE if self.direction == MAXIMIZE else StudyDirection.MINIMIZE


@dataclass(frozen=True)
class Point:
    """One trial of a grid: a method, its parameter values and a seed."""

    method: str
    params: dict
    seed: int

    @property
    def key(self) -> str:
        return point_key(self.method, self.params, self.seed)


# --------------------------------------------------------------------------------------------
# loading


def as_search_space(space: SearchSpace | str | os.PathLike[str] | Mapping) -> SearchSpace:
    """A SearchSpace from a YAML path, a document (mapping) or a SearchSpace."""
    if isinstance(space, (str, os.PathLike)):
        return load_space(space)
    if isinstance(space, Mapping):
        return parse_space(space)
    return space


def load_space(path: str | os.PathLike[str]) -> SearchSpace:
    """Read and validate a search-space YAML file (ConfigError on any problem)."""
    source = str(path)
    doc = parse_document_text(read_document_text(path, source), source, loader=_UniqueKeySafeLoader)
    try:
        return parse_space(doc, source)
    except RecursionError:
        raise ConfigError(source, "", "the document is nested too deeply") from None


class _UniqueKeySafeLoader(FastSafeLoader):
    """yaml.SafeLoader that refuses repeated mapping keys.

    Plain safe_load keeps the last of two equal keys, so a copied method block whose name was
    not changed would silently replace the first one; here it is an error naming its line."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: the base class reports it
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_space(doc: Any, source: str = "<string>") -> SearchSpace:
    """Validate a search-space document (already parsed YAML/JSON) into a SearchSpace."""
    if doc is None:
        raise ConfigError(source, "", "the document is empty; expected a mapping with keys "
                          + ", ".join(TOP_LEVEL_KEYS))
    if not isinstance(doc, Mapping):
        raise ConfigError(source, "", f"the document must be a mapping with keys "
                          f"{', '.join(TOP_LEVEL_KEYS)}, got {type(doc).__name__} {show_value(doc)}")
    doc = require_mapping(doc, source, "")
    check_keys(doc, TOP_LEVEL_KEYS, source, "")
    for key in ("study", "dataset", "model", "training", "methods"):
        if key not in doc or doc[key] is None:
            raise ConfigError(source, key, "is required")

    study_name = check_study_name(doc["study"], source, "study")
    dataset = validate_dataset_spec(doc["dataset"], source, "dataset")
    model = validate_model_spec(doc["model"], source, "model")
    training, seeds = _parse_training(doc["training"], source)
    sampler = _parse_sampler(doc.get("sampler", "grid"), source)
    objective = doc.get("objective", TRAIN_LOSS)
    if objective not in OBJECTIVES:
        raise ConfigError(source, "objective",
                          f"must be one of {', '.join(OBJECTIVES)}, got {show_value(objective)}")
    methods = _parse_methods(doc["methods"], source, sampler["name"])
    _check_study_size(methods, seeds, sampler, source)
    if sampler["name"] != "grid":
        methods = _harmonise_sampled(methods, source)

    document = {
        "study": study_name,
        "dataset": copy.deepcopy(dataset),
        "model": copy.deepcopy(model),
        "training": {**copy.deepcopy(training), "seeds": list(seeds)},
        "sampler": dict(sampler),
        "objective": objective,
        "methods": {name: _method_document(m) for name, m in methods.items()},
    }
    space = SearchSpace(
        source=source,
        study_name=study_name,
        document=document,
        dataset=dataset,
        model=model,
        training=training,
        seeds=seeds,
        sampler=sampler,
        objective=objective,
        direction=DIRECTION_OF_OBJECTIVE[objective],
        methods=methods,
    )
    # The rules between the parts of a trial, the same for every point of the space.
    check_objective_fits_model(objective, model, source)
    check_model_fits_data(model, dataset, source)
    return space


#: Optuna's studies.study_name column holds this many characters (a longer name fails on
#: PostgreSQL and MySQL only after the driver has started).
MAX_STUDY_NAME = 512


def _check_printable(name: str, source: str, field: str, what: str) -> None:
    """Names end up in titles, legends, file names and one-line messages: no control, format
    or line-separator characters (newlines, tabs, bidi overrides, zero-width marks)."""
    for char in name:
        if unicodedata.category(char) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            raise ConfigError(source, field, f"{what} must not contain control characters, "
                              f"found {char!a} at position {name.index(char)}")


def check_study_name(value: Any, source: str, field: str) -> str:
    """A study name: a non-empty string of at most :data:`MAX_STUDY_NAME` printable characters."""
    name = require_str(value, source, field)
    if len(name) > MAX_STUDY_NAME:
        raise ConfigError(source, field, f"a study name has at most {MAX_STUDY_NAME} characters "
                          f"(the storage's limit), got {len(name)}")
    _check_printable(name, source, field, "a study name")
    return name


#: Trials one study may ask for unless PROXSTUDY_MAX_TRIALS says otherwise: checked before a
#: single point is built, so a typo such as `points: 1000000000` costs one line, not the memory.
DEFAULT_MAX_TRIALS = 100_000
#: Optuna stores every param as a float: seeds above this would not read back as themselves,
#: and resume would not recognise their trials.
MAX_STORED_SEED = 2**53
ENV_MAX_TRIALS = "PROXSTUDY_MAX_TRIALS"


def max_trials() -> int:
    """The trial limit of one study: $PROXSTUDY_MAX_TRIALS, else :data:`DEFAULT_MAX_TRIALS`."""
    text = os.environ.get(ENV_MAX_TRIALS, "").strip()
    if not text:
        return DEFAULT_MAX_TRIALS
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(ENV_MAX_TRIALS, "", f"must be a whole number >= 1, got {show_value(text)}")
    return int(text)


def check_trial_count(count: int, source: str, field: str, what: str) -> None:
    """ConfigError naming ``field`` when ``count`` trials are over the limit (how to raise it)."""
    limit = max_trials()
    if count > limit:
        raise ConfigError(source, field, f"{what} asks for {count:,} trials, over the limit of {limit:,} per "
                          f"study; split the study, or raise the limit with {ENV_MAX_TRIALS}={count}")


def _check_study_size(methods: Mapping[str, MethodSpace], seeds: Sequence[int], sampler: Mapping,
                      source: str) -> None:
    """The whole study's trial count against the limit, from the lengths alone (nothing built)."""
    limit = max_trials()
    if sampler["name"] != "grid":
        total = int(sampler["n_trials"]) * len(seeds) * len(methods)
        if total > limit:
            check_trial_count(total, source, "sampler.n_trials", f"n_trials x {len(seeds)} seed(s) x "
                              f"{len(methods)} method(s)")
        return
    total = 0
    for method in methods.values():
        per_seed = 1
        for param in method.params.values():
            per_seed *= max(1, len(param.values))  # exact: Python integers do not overflow
        total += per_seed * len(seeds)
        if total > limit:
            check_trial_count(total, source, join_field("methods", method.name),
                              f"the grid (up to this method, x {len(seeds)} seed(s))")


def _parse_training(value: Any, source: str) -> tuple[dict, tuple[int, ...]]:
    doc = require_mapping(value, source, "training")
    seeds = _parse_seeds(doc.get("seeds", [0]), source, "training.seeds")
    rest = {k: v for k, v in doc.items() if k != "seeds"}
    return validate_training_spec(rest, source, "training"), seeds


def _parse_seeds(value: Any, source: str, field: str) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ConfigError(source, field, f"an integer N means seeds 0..N-1 and must be >= 1, got {value}")
        check_trial_count(value, source, field, "seeds")
        return tuple(range(value))
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ConfigError(source, field, f"must be a list of integers or an integer N, got {show_value(value)}")
    if not value:
        raise ConfigError(source, field, "must not be empty")
    seeds = tuple(require_seed(v, source, join_field(field, i)) for i, v in enumerate(value))
    seen: set[int] = set()
    for i, seed in enumerate(seeds):
        if seed >= MAX_STORED_SEED:
            raise ConfigError(source, join_field(field, i), "a seed of a sweep must be < 2**53 (Optuna stores "
                              f"params as floats, exact only below that), got {show_value(seed)}")
        if seed in seen:
            raise ConfigError(source, join_field(field, i), f"repeats seed {seed}")
        seen.add(seed)
    return seeds


def _parse_sampler(value: Any, source: str) -> dict:
    if isinstance(value, str):
        value = {"name": value}
    doc = require_mapping(value, source, "sampler")
    if "name" not in doc:
        raise ConfigError(source, "sampler.name", f"is required (one of {', '.join(SAMPLERS)})")
    name = doc["name"]
    if name not in SAMPLERS:
        raise ConfigError(source, "sampler.name", f"must be one of {', '.join(SAMPLERS)}, got {show_value(name)}")
    if name == "grid":
        for key in ("n_trials", "seed"):
            if key in doc:
                raise ConfigError(source, f"sampler.{key}", "only the random and tpe samplers take "
                                  "this; the grid sampler runs every grid point once per seed")
        check_keys(doc, ("name",), source, "sampler")
        return {"name": "grid"}
    check_keys(doc, ("name", "n_trials", "seed"), source, "sampler")
    if doc.get("n_trials") is None:
        raise ConfigError(source, "sampler.n_trials", f"is required for the {name} sampler")
    n_trials = require_int(doc["n_trials"], source, "sampler.n_trials", 1)
    check_trial_count(n_trials, source, "sampler.n_trials", "n_trials")
    seed = require_int(doc.get("seed", 0), source, "sampler.seed", 0)
    if seed >= 2**32:
        raise ConfigError(source, "sampler.seed", f"must be < 2**32 (the samplers' limit), got {seed}")
    return {"name": name, "n_trials": n_trials, "seed": seed}


def _parse_methods(value: Any, source: str, sampler: str) -> dict[str, MethodSpace]:
    doc = require_mapping(value, source, "methods")
    if not doc:
        raise ConfigError(source, "methods", "must name at least one method")
    methods = {}
    for name, spec in doc.items():
        field = join_field("methods", name)
        if not name or "|" in name or "=" in name or name != name.strip():
            raise ConfigError(source, field, "a method name must be a non-empty string without "
                              "'|', '=' or surrounding spaces (it is part of point keys)")
        _check_printable(name, source, field, "a method name")
        methods[name] = _parse_method(name, spec, source, field, sampler)
    return methods


def _parse_method(name: str, spec: Any, source: str, field: str, sampler: str) -> MethodSpace:
    if spec is None:
        spec = {}
    doc = require_mapping(spec, source, field)
    check_keys(doc, METHOD_KEYS, source, field)
    if doc.get("mode") is None:
        raise ConfigError(source, join_field(field, "mode"), f"is required (one of {', '.join(MODES)})")
    mode = doc["mode"]
    if mode not in MODES:
        raise ConfigError(source, join_field(field, "mode"),
                          f"must be one of {', '.join(MODES)}, got {show_value(mode)}")
    prox = mode != MODE_GRADIENT

    def positive(v: Any, path: str) -> float:
        return require_float(v, source, path, positive=True)

    def at_least_one(v: Any, path: str) -> int:
        return require_int(v, source, path, 1)

    params: dict[str, Param] = {}
    if doc.get("lr") is None:
        raise ConfigError(source, join_field(field, "lr"), "is required")
    params[PARAM_LR] = _parse_swept(PARAM_LR, doc["lr"], source, join_field(field, "lr"), positive, False, sampler)
    if "tau_prox" in doc and not prox:
        raise ConfigError(source, join_field(field, "tau_prox"),
                          "applies only to modes prox_exact and prox_cg, not to gradient")
    if prox:
        if doc.get("tau_prox") is None:
            raise ConfigError(source, join_field(field, "tau_prox"), f"is required for mode {mode}")
        params[PARAM_TAU] = _parse_swept(PARAM_TAU, doc["tau_prox"], source, join_field(field, "tau_prox"),
                                         positive, False, sampler)
    if "cg_iterations" in doc and mode not in CG_MODES:
        raise ConfigError(source, join_field(field, "cg_iterations"),
                          f"applies only to modes prox_cg and prox_cg_ref, not to {mode}")
    if mode in CG_MODES:
        if doc.get("cg_iterations") is None:
            raise ConfigError(source, join_field(field, "cg_iterations"), f"is required for mode {mode}")
        params[PARAM_CG] = _parse_swept(PARAM_CG, doc["cg_iterations"], source, join_field(field, "cg_iterations"),
                                        at_least_one, True, sampler)
    fixed, swept = _parse_optimizer(doc.get("optimizer", {"name": "sgd"}), source,
                                    join_field(field, "optimizer"), sampler)
    params.update(swept)
    return MethodSpace(name=name, mode=mode, params=params, optimizer=fixed)


def _parse_optimizer(value: Any, source: str, field: str, sampler: str) -> tuple[dict, dict[str, Param]]:
    """The optimizer's fixed fields (validated by workers.config) and its swept fields.

    Every candidate value of a swept field is validated in context (the fixed fields plus the
    other swept fields at their first value), so cross-field rules such as "nesterov needs
    momentum > 0" hold at every point that can run."""
    doc = require_mapping(value, source, field)
    raw_fixed: dict[str, Any] = {}
    swept: dict[str, Param] = {}
    for key, val in doc.items():
        if key in UNSWEPT_OPTIMIZER_FIELDS or not isinstance(val, (Sequence, Mapping)) or isinstance(val, str):
            raw_fixed[key] = val
            continue
        name = OPTIMIZER_PARAM_PREFIX + key
        # Shape first (numbers in ranges), values below through the optimizer validator.
        swept[key] = _parse_swept(name, val, source, join_field(field, key),
                                  lambda v, path: require_float(v, source, path), False, sampler,
                                  check_choices=False)
    representative = {**raw_fixed, **{k: p.values[0] if p.values else p.low for k, p in swept.items()}}
    swept_paths = {join_field(field, key) for key in swept}
    normalised: dict[str, Param] = {}
    for key, param in swept.items():
        path = join_field(field, key)

        def check(candidate: Any, candidate_path: str, key: str = key, path: str = path) -> Any:
            try:
                return validate_optimizer_spec({**representative, key: candidate}, source, field)[key]
            except ConfigError as exc:
                if exc.field == path and not exc.message.startswith("unknown key"):
                    raise ConfigError(source, candidate_path, exc.message) from None
                if exc.field in swept_paths:
                    return candidate  # another swept field's value is bad: its own check says so
                raise

        if param.kind == "choice":
            values = tuple(check(v, join_field(path, i)) for i, v in enumerate(param.values))
            _check_distinct(values, source, path)
            normalised[OPTIMIZER_PARAM_PREFIX + key] = replace(param, values=values)
        else:  # range: the bounds and every grid value must be valid settings
            check(param.low, join_field(path, "low"))
            check(param.high, join_field(path, "high"))
            for v in param.values:
                check(v, path)
            normalised[OPTIMIZER_PARAM_PREFIX + key] = param
    fixed_full = validate_optimizer_spec(representative, source, field)
    fixed = {k: v for k, v in fixed_full.items() if k not in swept}
    return fixed, normalised


def _parse_swept(
    name: str,
    value: Any,
    source: str,
    field: str,
    check: Callable[[Any, str], Any],
    integer: bool,
    sampler: str,
    check_choices: bool = True,
) -> Param:
    """A scalar (fixed), a non-empty list (choices) or a range mapping; see the module doc."""
    default_log = _DEFAULT_LOG.get(name, False)
    if isinstance(value, Mapping):
        return _parse_range(name, value, source, field, check, integer, sampler)
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        if not value:
            raise ConfigError(source, field, "an empty list has nothing to try; give a value, a list or "
                              "a range {low, high, log, points}")
        if check_choices:
            values = tuple(check(v, join_field(field, i)) for i, v in enumerate(value))
            _check_distinct(values, source, field)
        else:
            values = tuple(value)
        return Param(name=name, kind="choice", values=values, log=default_log, integer=integer)
    return Param(name=name, kind="fixed", values=(check(value, field),), log=default_log, integer=integer)


def _parse_range(
    name: str,
    value: Mapping,
    source: str,
    field: str,
    check: Callable[[Any, str], Any],
    integer: bool,
    sampler: str,
) -> Param:
    doc = require_mapping(value, source, field)
    check_keys(doc, RANGE_KEYS, source, field)
    for key in ("low", "high"):
        if doc.get(key) is None:
            raise ConfigError(source, join_field(field, key), "is required in a range {low, high, log, points}")
    log = require_bool(doc.get("log", False), source, join_field(field, "log"))
    if log:  # say why before a generic "must be > 0" from the value check
        low_number = doc["low"]
        if _is_number(low_number) and low_number <= 0:
            raise ConfigError(source, join_field(field, "low"), f"a log range needs low > 0, got {low_number}")
    low = check(doc["low"], join_field(field, "low"))
    high = check(doc["high"], join_field(field, "high"))
    if integer:
        low = require_int(low, source, join_field(field, "low"))
        high = require_int(high, source, join_field(field, "high"))
    else:
        low, high = float(low), float(high)
    if not low < high:
        raise ConfigError(source, field, f"low ({low}) must be < high ({high}); write a single value as a scalar")
    points = doc.get("points")
    if points is None:
        if sampler == "grid":
            raise ConfigError(source, join_field(field, "points"),
                              "is required with the grid sampler (how many values of the range to run)")
        values: tuple = ()
    else:
        points = require_int(points, source, join_field(field, "points"), 2)
        check_trial_count(points, source, join_field(field, "points"), "points")
        values = _range_grid(low, high, points, log, integer)
        if integer and len(set(values)) != len(values):
            raise ConfigError(source, join_field(field, "points"),
                              f"{points} points of an integer range [{low}, {high}] repeat after rounding "
                              f"({list(values)}); use fewer points or a list")
    return Param(name=name, kind="range", values=values, low=low, high=high, log=log, points=points,
                 integer=integer)


def _range_grid(low: float, high: float, points: int, log: bool, integer: bool) -> tuple:
    """Evenly spaced (log-spaced) values, endpoints exact, rounded to GRID_DIGITS digits."""
    values = []
    for i in range(points):
        if i == 0:
            v = float(low)
        elif i == points - 1:
            v = float(high)
        elif log:
            v = math.exp(math.log(low) + (math.log(high) - math.log(low)) * i / (points - 1))
        else:
            v = low + (high - low) * i / (points - 1)
        values.append(round(v) if integer else float(f"{v:.{GRID_DIGITS}g}"))
    return tuple(values)


def _distinct_key(value: Any) -> tuple[type, Any]:
    """Two values are the same choice when equal and of one type (1 and 1.0 and True differ)."""
    return type(value), value


def _check_distinct(values: Sequence, source: str, field: str) -> None:
    """Linear in the number of values (validated values are numbers, bools or strings)."""
    seen: set[tuple[type, Any]] = set()
    for index, v in enumerate(values):
        key = _distinct_key(v)
        if key in seen:
            raise ConfigError(source, join_field(field, index), f"repeats an earlier value: {show_value(v)}")
        seen.add(key)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _harmonise_sampled(methods: dict[str, MethodSpace], source: str) -> dict[str, MethodSpace]:
    """random/tpe: one sampling distribution kind (and log flag) per param name.

    Optuna records one distribution kind per name for the whole study, so every method that
    samples a name must sample it the same way; fixed values take the scale of the ranges."""
    scale: dict[str, tuple[str, bool]] = {}
    for method in methods.values():
        for name, param in method.params.items():
            if param.kind == "range":
                scale.setdefault(name, (method.name, param.log))
    out = {}
    for method in methods.values():
        params = {}
        for name, param in method.params.items():
            if param.kind == "fixed" and name in scale:
                param = replace(param, log=scale[name][1])
            params[name] = param
        out[method.name] = replace(method, params=params)
    first: dict[str, tuple[str, BaseDistribution]] = {}
    for method in out.values():
        for name, param in method.params.items():
            dist = param.optuna_distribution()
            if name not in first:
                first[name] = (method.name, dist)
                continue
            other, other_dist = first[name]
            try:
                check_distribution_compatibility(other_dist, dist)
            except ValueError:
                raise ConfigError(
                    source,
                    _param_field(method.name, name),
                    f"the random/tpe samplers need one kind of distribution per parameter across "
                    f"methods (Optuna records one per name): method {other!r} gives "
                    f"{_describe(other_dist)}, this one {_describe(dist)}; use ranges with the same "
                    f"log flag (or identical lists), or the grid sampler",
                ) from None
    return out


def _describe(dist: BaseDistribution) -> str:
    if isinstance(dist, (IntDistribution, FloatDistribution)):
        kind = "an integer" if isinstance(dist, IntDistribution) else "a"
        scale = "log" if dist.log else "linear"
        return f"{kind} {scale} range [{dist.low}, {dist.high}]"
    assert isinstance(dist, CategoricalDistribution), dist  # Param.optuna_distribution makes no other
    return f"a list {list(dist.choices)}"


def _param_field(method: str, name: str) -> str:
    return join_field(join_field("methods", method), name)


def _method_document(method: MethodSpace) -> dict:
    out: dict[str, Any] = {"mode": method.mode}
    for name in (PARAM_LR, PARAM_TAU, PARAM_CG):
        if name in method.params:
            out[name] = method.params[name].to_document()
    optimizer = dict(method.optimizer)
    for name, param in method.params.items():
        if name.startswith(OPTIMIZER_PARAM_PREFIX):
            optimizer[name[len(OPTIMIZER_PARAM_PREFIX):]] = param.to_document()
    out["optimizer"] = optimizer
    return out


# --------------------------------------------------------------------------------------------
# grids, distributions, trial configs


def grid_points(space: SearchSpace) -> list[Point]:
    """Every grid point of every method, once per seed, in the order of the module docstring."""
    points = []
    for seed in space.seeds:
        for method in space.methods.values():
            names = list(method.params)
            grids = [method.params[n].grid_values() for n in names]
            for combo in itertools.product(*grids):
                points.append(Point(method=method.name, params=dict(zip(names, combo, strict=True)), seed=seed))
    return points


def recorded_distributions(space: SearchSpace) -> dict[str, BaseDistribution]:
    """One Optuna distribution per param name for the whole study (see the module docstring);
    every grid point (and every sampled point) of the space lies inside them."""
    out: dict[str, BaseDistribution] = {
        PARAM_METHOD: CategoricalDistribution(list(space.methods)),
        PARAM_SEED: IntDistribution(min(space.seeds), max(space.seeds)),
    }
    by_name: dict[str, list[Param]] = {}
    for method in space.methods.values():
        for name, param in method.params.items():
            by_name.setdefault(name, []).append(param)
    sampled = space.sampler["name"] != "grid"
    for name, params in by_name.items():
        values = [v for p in params for v in _span_values(p)]
        if not all(_is_number(v) for v in values) or (
            sampled and isinstance(params[0].optuna_distribution(), CategoricalDistribution)
        ):
            choices: list = []
            seen: set[tuple[type, Any]] = set()
            for v in values:
                if _distinct_key(v) not in seen:
                    seen.add(_distinct_key(v))
                    choices.append(v)
            out[name] = CategoricalDistribution(choices)
            continue
        first = params[0].optuna_distribution()
        if sampled and isinstance(first, (IntDistribution, FloatDistribution)):
            log = first.log
        elif name in _DEFAULT_LOG:
            log = _DEFAULT_LOG[name]
        else:
            log = False
        if params[0].integer:
            out[name] = IntDistribution(int(min(values)), int(max(values)), log=log)
        else:
            out[name] = FloatDistribution(float(min(values)), float(max(values)), log=log)
    return out


def _span_values(param: Param) -> list:
    if param.kind == "range":
        return [param.low, param.high, *param.values]
    return list(param.values)


def trial_config(
    space: SearchSpace,
    method: str,
    params: Mapping[str, Any],
    seed: int,
    device: str = "auto",
) -> TrialConfig:
    """The trial config of one point of a validated space: the method's fixed optimizer fields
    overlaid with the swept ones, params missing from ``params`` taken at their fixed value.
    Every value comes from the validated space (its grid, or a distribution checked at its
    bounds), so nothing is checked again; ``device`` must be a validated device string."""
    if method not in space.methods:
        raise KeyError(f"no method {method!r} in the search space (has: {', '.join(space.methods)})")
    m = space.methods[method]
    unknown = set(params) - set(m.params)
    if unknown:
        raise KeyError(f"method {method!r} has no params {sorted(unknown)} (has: {sorted(m.params)})")
    values = {}
    for name, param in m.params.items():
        if name in params:
            values[name] = params[name]
        elif param.kind == "fixed":
            values[name] = param.values[0]
        else:
            raise KeyError(f"method {method!r}: swept param {name!r} needs a value")
    optimizer = dict(m.optimizer)
    for name, value in values.items():
        if name.startswith(OPTIMIZER_PARAM_PREFIX):
            optimizer[name[len(OPTIMIZER_PARAM_PREFIX):]] = value
    cg_iterations = values.get(PARAM_CG)
    tau_prox = values.get(PARAM_TAU)
    return TrialConfig(
        dataset=copy.deepcopy(space.dataset),
        model=copy.deepcopy(space.model),
        training=copy.deepcopy(space.training),
        objective=space.objective,
        method=method,
        mode=m.mode,
        lr=float(values[PARAM_LR]),
        tau_prox=None if tau_prox is None else float(tau_prox),
        cg_iterations=None if cg_iterations is None else int(cg_iterations),
        optimizer=optimizer,
        seed=int(seed),
        device=device,
    )
