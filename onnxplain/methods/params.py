"""Method parameters, declared once: what the API checks, the command line offers, a request carries
and the README's method table lists.

Each method class declares its parameters as a tuple of :class:`Param`::

    parameters = (Param("n_steps", 50, "int", "integration steps", own_check=True), ...)

and its ``defaults`` dict (``{"n_steps": 50, ...}``, read all over the code) is derived from
them (:meth:`onnxplain.methods.Method.__init_subclass__`, with :func:`defaults_of`).
``Method.check_params`` checks every given value against its declaration's kind
(:meth:`Param.check`) before anything runs, unless the method checks that value itself with a
more specific message (``own_check``).  The command line's flags (:func:`offered`), the Open
Inference Protocol's request inputs (:func:`onnxplain.serve.protocol.request_form`) and the
README's table (:func:`markdown_table`) are read off the same declarations.

This module imports no method (the methods import it): the functions that need every method are
in :mod:`onnxplain.methods` (``method_table()``, ``offered_parameters()``).
"""
from __future__ import annotations

import keyword
import numbers
from dataclasses import dataclass, replace
from typing import Any, Iterable

import numpy as np

#: the kinds of value a parameter takes
KINDS = ("int", "float", "bool", "str", "choice", "ints", "array")
#: the kinds that may take a few words besides their values (``Param.words``)
WORD_KINDS = ("int", "float", "bool", "ints")
#: what each kind expects, as errors and the command line's help say it
EXPECTED = {
    "int": "an int",
    "float": "a number",
    "bool": "True or False",
    "str": "a string",
    "choice": "one of {choices}",
    "ints": "an int or a tuple of ints, or one of these per input (a tuple, or a dict by input name)",
    "array": "an array or a number",
}


@dataclass(frozen=True)
class Param:
    """One method parameter.

    name, default, kind, doc: the keyword of ``explain`` and ``convert``, its default, one of
        :data:`KINDS` (``int``, ``float``, ``bool``, ``str``, ``choice`` among ``choices``, ``ints``:
        an int or a tuple of ints such as a window shape, ``array``: numbers of any shape) and a
        one-line description (the README's table and the command line's help show it).
    choices: the values a ``choice`` takes.
    words: a few exact strings the parameter takes besides its kind's values (``("auto",)`` for an
        ``int`` that can also be ``"auto"``): accepted by the check, read by the command line's flag
        after the kind's reader fails (exact, case-sensitive), carried by a request as a string, and
        shown in the README's table and the flag's help.  For the kinds int, float, bool and ints.
    per_input: an array given per attributed input (a tuple, or a dict by input name, with
        several): ``baselines``, ``feature_mask``, ``noise``.  A request carries one tensor per
        attributed input, shaped ``leading`` axes of any size (1: the rows, or 1 for all rows;
        2: noise's samples and rows) then one row of the input, of the input's element type
        (``dtype="input"``) or integers (``dtype="int"``: group ids).
    own_check: the method checks the value itself, with a message more specific than the kind's
        (a range, a scheme's name): ``check_params`` leaves the value to it.
    in_graph: the explanation graph stores the value as its default (``convert`` and
        ``onnxplain triton`` take it); False for what only a call uses (a chunk size, a seed of
        perturbations, a progress bar).
    required: the method needs a value although the default is None (documentation: the method
        says so when it runs, with its own message).
    cli: the command line's spelling, ``"--flag"`` or ``"--flag METAVAR"`` (default: ``--`` and the
        name with dashes).
    request: the name of the request input that carries it, when it differs from ``name``;
        None: no request carries it (a progress bar draws on the server's terminal).
    """

    name: str
    default: Any
    kind: str
    doc: str
    choices: tuple = ()
    words: tuple = ()
    per_input: bool = False
    dtype: str = "input"
    leading: int = 1
    own_check: bool = False
    in_graph: bool = True
    required: bool = False
    cli: str = ""
    request: str | None = ""

    def __post_init__(self):
        where = f"Param {self.name!r}"
        if not isinstance(self.name, str) or not self.name.isidentifier() or keyword.iskeyword(self.name):
            raise ValueError(f"a parameter's name must be a Python identifier (an explain keyword), got {self.name!r}")
        if self.kind not in KINDS:
            raise ValueError(f"{where}: unknown kind {self.kind!r}; the kinds are {', '.join(KINDS)}")
        if not isinstance(self.doc, str) or not self.doc.strip() or "\n" in self.doc:
            raise ValueError(f"{where}: doc must be one line of text, got {self.doc!r}")
        if self.kind == "choice":
            if not self.choices or not all(isinstance(c, str) for c in self.choices):
                raise ValueError(f"{where}: a choice needs its choices, a tuple of strings; got {self.choices!r}")
        elif self.choices:
            raise ValueError(f"{where}: choices are for kind 'choice', not {self.kind!r}")
        if self.words:
            if self.kind not in WORD_KINDS:
                raise ValueError(f"{where}: words are for the kinds {', '.join(WORD_KINDS)}, not {self.kind!r} "
                                 f"(a str takes any string, a choice lists its words as choices)")
            if not isinstance(self.words, tuple) or not all(isinstance(w, str) and w.strip() == w and w
                                                            for w in self.words):
                raise ValueError(f"{where}: words must be a tuple of non-empty strings without surrounding "
                                 f"spaces, got {self.words!r}")
        if self.per_input and self.kind != "array":
            raise ValueError(f"{where}: only arrays are given per input (kind 'array'), not kind {self.kind!r}")
        if self.dtype not in ("input", "int"):
            raise ValueError(f"{where}: dtype must be 'input' (the input's element type) or 'int', got {self.dtype!r}")
        if (self.dtype != "input" or self.leading != 1) and not self.per_input:
            raise ValueError(f"{where}: dtype and leading describe per-input arrays (per_input=True)")
        if self.leading not in (1, 2):
            raise ValueError(f"{where}: leading must be 1 (rows) or 2 (samples and rows), got {self.leading!r}")
        if self.required and self.default is not None:
            raise ValueError(f"{where}: a required parameter has no default (None), got {self.default!r}")
        spelling = self.cli.split()
        if self.cli and (len(spelling) > 2 or not spelling[0].startswith("--") or len(spelling[0]) < 3):
            raise ValueError(f"{where}: cli must be '--flag' or '--flag METAVAR', got {self.cli!r}")
        if self.request is not None and not isinstance(self.request, str):
            raise ValueError(f"{where}: request must be a name, '' (the parameter's own) or None, got {self.request!r}")
        if self.default is not None and not self.accepts(self.default):
            raise ValueError(f"{where}: its default {self.default!r} is not {self.expected}")

    # ------------------------------------------------------------------ values
    @property
    def expected(self) -> str:
        """What a value must be, in words (None too when the default is None)."""
        text = EXPECTED[self.kind].format(choices=", ".join(self.choices))
        if self.words:
            text += " or " + self.shown_words()
        if self.per_input:
            text += ", or one per input (a tuple, or a dict by input name)"
        return text + (", or None" if self.default is None else "")

    def accepts(self, value) -> bool:
        """Whether ``value`` is of this parameter's kind (None only when the default is None)."""
        if value is None:
            return self.default is None
        if self.is_word(value):
            return True
        return _KIND_CHECKS[self.kind](self, value)

    def is_word(self, value) -> bool:
        """Whether ``value`` is one of the declared :attr:`words` (exactly: a str, same case)."""
        return isinstance(value, str) and value in self.words

    def shown_words(self) -> str:
        """The words as errors and help show them: ``"auto"``, ``"auto" or "off"``."""
        quoted = [f'"{w}"' for w in self.words]
        return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]

    def check(self, value, method: str) -> None:
        """Refuse ``value`` when it is not of this parameter's kind: a ValueError naming the
        parameter, the method and what was expected."""
        if not self.accepts(value):
            raise ValueError(f"{self.name} must be {self.expected}, got {_shown(value)} (parameter of method "
                             f"{method!r}: {self.doc})")

    def but(self, **changes) -> "Param":
        """This declaration with some fields changed (a method's own doc or default of a shared parameter)."""
        return replace(self, **changes)

    # ------------------------------------------------------------------ spellings
    @property
    def flag(self) -> str:
        """The command line's flag: ``--n-steps``."""
        return self.cli.split()[0] if self.cli else "--" + self.name.replace("_", "-")

    @property
    def metavar(self) -> str | None:
        """The command line's metavar when the declaration spells one (``--integration SCHEME``)."""
        spelling = self.cli.split()
        return spelling[1] if len(spelling) == 2 else None

    @property
    def request_name(self) -> str | None:
        """The request input that carries the parameter (None: none does)."""
        if self.request is None:
            return None
        return self.request or self.name

    def shown_default(self) -> str:
        """The default as Python writes it: ``50``, ``"gausslegendre"``, ``None``."""
        return f'"{self.default}"' if isinstance(self.default, str) else repr(self.default)


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def _ints(v, top: bool = True, depth: int = 0) -> bool:
    """An int, a tuple (or list, or 1-D integer array) of ints, or one of these per input."""
    if _is_int(v):
        return True
    if isinstance(v, np.ndarray):
        return v.dtype.kind in "iu" and v.ndim <= 1
    if isinstance(v, dict):
        return top and all(isinstance(k, str) and _ints(x, False, 1) for k, x in v.items())
    if isinstance(v, (tuple, list)):
        return depth < 2 and all(_ints(x, False, depth + 1) for x in v)
    return False


def _array(v, per_input: bool, top: bool = True) -> bool:
    """Numbers of any shape: a number, nested lists of numbers, an array (numpy's or any library's
    that numpy can read); per input also a tuple or a dict of them (None: that input's default)."""
    if v is None:
        return not top
    if isinstance(v, (str, bytes)):
        return False
    if isinstance(v, (numbers.Number, np.bool_, np.number)):
        return True
    if isinstance(v, np.ndarray):
        return v.dtype.kind in "biufc"
    if isinstance(v, dict):
        return per_input and top and all(isinstance(k, str) and _array(x, per_input, False) for k, x in v.items())
    if isinstance(v, (tuple, list)):
        return all(_array(x, per_input, False) for x in v)
    return any(hasattr(v, a) for a in ("__array__", "__array_interface__", "__cuda_array_interface__", "__dlpack__"))


_KIND_CHECKS = {
    "int": lambda p, v: _is_int(v),
    "float": lambda p, v: _is_number(v),
    "bool": lambda p, v: isinstance(v, (bool, np.bool_)),
    "str": lambda p, v: isinstance(v, str),
    "choice": lambda p, v: isinstance(v, str) and v in p.choices,
    "ints": lambda p, v: _ints(v),
    "array": lambda p, v: _array(v, p.per_input),
}


def _shown(value) -> str:
    """A value as an error shows it: arrays by shape and dtype, anything else by a short repr."""
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# ---------------------------------------------------------------------- declarations -> defaults, checks
def defaults_of(parameters: Iterable[Param]) -> dict:
    """``{name: default}`` of the declarations, in their order (a method's ``defaults``)."""
    out = {}
    for p in parameters:
        if not isinstance(p, Param):
            raise TypeError(f"method parameters are declared as Param, got {p!r}")
        if p.name in out:
            raise ValueError(f"parameter {p.name!r} is declared twice")
        out[p.name] = p.default
    return out


def merged(inner: Iterable[Param], outer: Iterable[Param]) -> tuple[Param, ...]:
    """``inner``'s declarations with ``outer``'s in place of those of the same name, then ``outer``'s
    others: the parameters of a method wrapped in another (a noise tunnel over a method), in the
    order ``{**inner_defaults, **outer_defaults}`` lists them."""
    outer = tuple(outer)
    by_name = {p.name: p for p in outer}
    own = tuple(by_name.get(p.name, p) for p in inner)
    seen = {p.name for p in own}
    return own + tuple(p for p in outer if p.name not in seen)


def check_values(parameters: Iterable[Param], values: dict, method: str) -> None:
    """Check each of ``values`` against its declaration's kind (see :meth:`Param.check`), except those
    the method checks itself (``own_check``) and names without a declaration."""
    declared = {p.name: p for p in parameters}
    for name, value in values.items():
        p = declared.get(name)
        if p is not None and not p.own_check:
            p.check(value, method)


# ---------------------------------------------------------------------- declarations several methods share
BASELINES = Param("baselines", None, "array", "the reference input (None: zeros): a number, one row, or an array "
                  "broadcasting against the input", per_input=True, cli="--baseline")
MULTIPLY_BY_INPUTS = Param("multiply_by_inputs", True, "bool", "multiply by x - baseline (False: Captum's "
                           "\"local\" attributions, without that factor)", own_check=True)
PERTURBATION_BASELINES = Param("baselines", None, "array", "what replaces the perturbed features (None: zeros; "
                               "with n_baselines, a background set of B rows)", per_input=True, in_graph=False,
                               cli="--baseline")
N_BASELINES = Param("n_baselines", None, "int", "draw this many of the baselines given (seeded by seed) and "
                    "average over them (None: all of them)", own_check=True, in_graph=False)
DRAW_SEED = Param("seed", None, "int", "seed of the n_baselines draws", own_check=True, in_graph=False)
FEATURE_MASK = Param("feature_mask", None, "array", "group ids, equal ids perturbed together (None: every "
                     "element alone)", per_input=True, dtype="int", in_graph=False)
PERTURBATIONS_PER_EVAL = Param("perturbations_per_eval", None, "int", "most perturbations of a row per run (None: "
                               "as many as the memory budget holds)", own_check=True, in_graph=False)
NEURON_SELECTOR = Param("neuron_selector", None, "ints", "the unit of the layer=: an index tuple into one row of "
                        "the layer (an int for a 2-D layer), or one tuple per row", own_check=True, required=True)
CUSTOM_ATTRIBUTION_FUNC = Param("custom_attribution_func", None, "str", "a Python callable (multipliers, inputs, "
                                "baselines) -> attributions, applied per baseline to the run's multipliers "
                                "(Python API only)", own_check=True, in_graph=False, request=None)
PROGRESS = Param("progress", None, "bool", "a progress bar on stderr (None: when a call runs over 2 s and stderr "
                 "is a terminal)", own_check=True, in_graph=False, request=None)


# ---------------------------------------------------------------------- the union over methods (flags)
@dataclass(frozen=True)
class Offered:
    """One parameter name as every method that takes it declares it: the command line's flag for it.

    ``uses`` are ``(method name, its declaration)`` pairs; the kind, the per-input form and the
    spellings are the same in every declaration (:func:`offered` checks), docs and defaults may differ.
    """

    name: str
    uses: tuple

    @property
    def param(self) -> Param:
        """The first declaration (kind and spellings are those of every other)."""
        return self.uses[0][1]

    @property
    def in_graph(self) -> bool:
        """Whether some method stores it as a graph default."""
        return any(p.in_graph for _, p in self.uses)

    def describe(self, graph_only: bool = False) -> str:
        """``"method, method: doc (default); method: doc"``: which methods take it, what it is (``graph_only``:
        only the methods whose graph stores it)."""
        groups: dict[Param, list[str]] = {}
        for method, p in self.uses:
            if p.in_graph or not graph_only:
                groups.setdefault(p, []).append(method)
        return "; ".join(f"{', '.join(methods)}: {_cli_doc(p)}" for p, methods in groups.items())


def _cli_doc(p: Param) -> str:
    if p.words:
        return _cli_doc(p.but(words=())) + f" (also {p.shown_words()})"
    if p.kind == "choice":
        return f"{p.doc}: " + ", ".join(c + (" (default)" if c == p.default else "") for c in p.choices)
    if p.required:
        return f"{p.doc} (required)"
    if p.default is None:
        return p.doc
    shown = str(p.default).lower() if isinstance(p.default, (bool, np.bool_)) else str(p.default)
    return f"{p.doc} (default: {shown})"


def offered(methods: Iterable[tuple[str, Iterable[Param]]]) -> list[Offered]:
    """The union of the methods' declarations (``(method name, parameters)`` pairs), one :class:`Offered`
    per parameter name, in the order they first appear."""
    uses: dict[str, list] = {}
    for method, parameters in methods:
        for p in parameters:
            uses.setdefault(p.name, []).append((method, p))
    out = []
    for name, pairs in uses.items():
        first = pairs[0][1]
        for method, p in pairs[1:]:
            if (p.kind, p.per_input, p.flag, p.metavar, p.request_name) != \
                    (first.kind, first.per_input, first.flag, first.metavar, first.request_name):
                raise ValueError(f"parameter {name!r} is declared differently by {pairs[0][0]!r} and {method!r} "
                                 f"(kind, per-input form or spellings): one flag and one request input cannot "
                                 f"serve both")
        out.append(Offered(name, tuple(pairs)))
    flags = {}
    for o in out:
        if o.param.flag in flags:
            raise ValueError(f"parameters {flags[o.param.flag]!r} and {o.name!r} share the flag {o.param.flag}")
        flags[o.param.flag] = o.name
    return out


# ---------------------------------------------------------------------- the README's method table
TABLE_HEADER = ("| method (aliases) | parameters (defaults) | Captum | DeepExplain |\n"
                "| --- | --- | --- | --- |")


def markdown_table(methods) -> str:
    """The README's method table (Markdown, no trailing newline) for ``methods``, instances in the order
    listed: name and aliases, each parameter with its default and doc, whether it has ``delta``, and
    the Captum and DeepExplain counterparts each method class declares (``captum``, ``deepexplain``,
    ``table_note``)."""
    rows, seen = [TABLE_HEADER], {}
    for m in methods:
        if not {"captum", "deepexplain"} <= set(type(m).__dict__):
            raise ValueError(f"method class {type(m).__name__} declares no captum and deepexplain counterparts "
                             f"of its own (Markdown, '–' for none): the README's table lists them")
        aliases = ", ".join(f"`{a}`" for a in m.aliases)
        name = f"`{m.name}`" + (f" ({aliases})" if aliases else "")
        params = tuple(m.parameters)
        if params and params in seen:
            cell = f"as `{seen[params]}`"
        else:
            seen.setdefault(params, m.name)
            cell = "; ".join(_markdown_param(p) for p in params) or "–"
        extra = [e for e in (("has `delta` (`return_convergence_delta=True`)" if m.has_delta else ""),
                             m.table_note) if e]
        if extra:
            cell = "; ".join(([cell] if cell != "–" else []) + extra)
        rows.append(f"| {name} | {cell} | {m.captum} | {m.deepexplain} |")
    return "\n".join(rows)


def _markdown_param(p: Param) -> str:
    head = f"`{p.name}` (required)" if p.required else f"`{p.name}={p.shown_default()}`"
    if p.words:
        head += " (or " + " or ".join(f'`"{w}"`' for w in p.words) + ")"
    doc = p.doc
    if p.kind == "choice":
        doc += ": " + ", ".join(f"`{c}`" for c in p.choices)
    return f"{head}: {_markdown(doc)}"


def _markdown(text: str) -> str:
    return text.replace("|", "\\|")
