"""Choosing a base model (``plan select``): the catalogue's card facts, checked against what the user needs, and
ranked the way a practitioner does. Pure: no I/O, no printing; tokens per character come in measured by the app
layer (:mod:`planner.app.commands.select`).

The criteria, in the order they rank (docs/data.md, "Choosing a base model"):

1. **Hard requirements** (a model that fails one ranks below every model that passes, with the reason):
   it fits the GPUs with the method (the plan search: :func:`planner.search.rank.search`); its context length is at
   least ``--seq``; the language is one its card names as supported (``--language``); its licence allows
   commercial use when ``--commercial`` (``open`` and ``conditional`` licences do; ``on-request`` needs a form
   first and counts only with ``--allow-on-request``); its parameter count is in ``--params``.
2. **Size**: more parameters first, by size class (whole billions, :func:`size_class`); within what fits, the
   larger base model is the stronger one (the scaling laws: Kaplan et al. 2020, arXiv:2001.08361; Hoffmann et al.
   2022, arXiv:2203.15556). Mixture-of-experts models count all their parameters (the table shows the active
   ones too): errs in their favour.
3. **Maintenance**: within a size class, a model whose family has a newer catalogue model
   (``card.superseded_by``) ranks below the ones that do not.
4. **Training tokens**, then **release date**, newer first.

Tokens per character (lower: the same text is fewer tokens, so cheaper and longer in the same context) and
throughput are shown, not ranked: they trade against size, and the table puts them side by side.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from planner.engine.calibration import CalibrationBook
from planner.search.rank import SearchError, SearchRequest, search
from planner.engine.setup import SetupError
from profiles.cluster import Cluster
from profiles.params import param_counts
from profiles.schema import COMMERCIAL, ModelProfile

COMMERCIAL_OK = ("open", "conditional")
"""Licences under which a company can ship a fine-tune without asking first (``on-request`` needs a form)."""


@dataclass(frozen=True)
class SelectRequest:
    method: str
    seq: int = 2048
    language: str | None = None
    commercial: bool = False
    allow_on_request: bool = False
    min_params: float | None = None
    max_params: float | None = None


@dataclass
class Candidate:
    """One catalogue model with its facts, the verdict and the reasons."""

    model: ModelProfile
    params: int
    fits: bool = False
    peak_bytes: int | None = None
    tokens_per_s: float | None = None
    plan: str = ""
    tokens_per_char: float | None = None
    failed: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    """one word per failed requirement, for narrow tables: fit, ctx, lang, licence, params"""
    reasons: list[str] = field(default_factory=list)

    def fail(self, tag: str, why: str) -> None:
        self.tags.append(tag)
        self.failed.append(why)

    @property
    def eligible(self) -> bool:
        return not self.failed

    def sort_key(self) -> tuple:
        card = self.model.card
        return (
            0 if self.eligible else 1,
            len(self.failed),
            -size_class(self.params),
            1 if card.superseded_by else 0,
            -self.params,
            -(card.training_tokens or 0.0),
            _neg_date(card.release_date),
        )


def size_class(params: int) -> float:
    """Parameters rounded to whole billions (tenths below 1.5B): models of one size class (Qwen2.5-7B's 7.6B and
    Qwen3-8B's 8.2B) tie on size, so maintenance decides between them."""
    b = params / 1e9
    return float(round(b)) if b >= 1.5 else round(b, 1)


def _neg_date(d: str) -> tuple[int, ...]:
    return tuple(-int(x) for x in d.split("-"))


@dataclass(frozen=True)
class SelectResult:
    ranked: list[Candidate]
    skipped: list[str]
    """catalogue models without card facts"""
    request: SelectRequest


def judge_model(model: ModelProfile, cluster: Cluster, req: SelectRequest, calibration: CalibrationBook | None = None,
             tokens_per_char: float | None = None) -> Candidate:
    """The facts and verdict of one catalogue model (which must have a card)."""
    card = model.card
    assert card is not None
    c = Candidate(model, param_counts(model).total, tokens_per_char=tokens_per_char)
    try:
        res = search(model, cluster, SearchRequest(fixed={"method": req.method, "seq_len": req.seq}, top=1,
                                                   calibration=calibration), with_suggestions=False)
        if res.plans:
            p = res.plans[0]
            c.fits, c.peak_bytes, c.tokens_per_s, c.plan = True, p.memory.peak_bytes, p.speed.tokens_per_s, p.setup.short()
            c.reasons.append(f"fits with {req.method}: {p.setup.short()}, peak {p.memory.peak_bytes / 2**30:.1f} GiB, "
                             f"{p.speed.tokens_per_s:,.0f} tokens/s (plan search)")
        else:
            c.fail("fit", f"does not fit {cluster.label()} with {req.method} at --seq {req.seq}")
    except (SearchError, SetupError) as e:
        c.fail("fit", f"no {req.method} plan: {str(e)[:100]}")
    if model.max_positions < req.seq:
        c.fail("ctx", f"context {model.max_positions:,} < --seq {req.seq:,}")
    if req.language:
        if req.language in card.languages:
            c.reasons.append(f"'{req.language}' supported per its card ({card.sources['languages']})")
        else:
            c.fail("lang", f"'{req.language}' not among its card's languages ({', '.join(card.languages)}"
                            + (f"; {card.languages_note}" if card.languages_note else "") + ")")
    ok = COMMERCIAL_OK + (("on-request",) if req.allow_on_request else ())
    lic = f"licence {card.license} ({card.commercial}: {COMMERCIAL[card.commercial].split(':')[0]})"
    if req.commercial and card.commercial not in ok:
        c.fail("licence", lic + " does not allow commercial use as asked")
    else:
        c.reasons.append(lic + (f"; {card.commercial_terms}" if card.commercial_terms else ""))
    if req.min_params is not None and c.params < req.min_params or req.max_params is not None and c.params > req.max_params:
        c.fail("params", f"{c.params / 1e9:.1f}B parameters outside --params")
    if card.superseded_by:
        c.reasons.append(f"superseded by {card.superseded_by}")
    tok = f"{card.training_tokens / 1e12:g}T training tokens, " if card.training_tokens else ""
    c.reasons.append(f"{tok}released {card.release_date}; context {model.max_positions:,}; vocabulary {model.vocab_size:,}")
    return c


def select(models: list[ModelProfile], cluster: Cluster, req: SelectRequest, calibration: CalibrationBook | None = None,
           tokens_per_char: dict[str, float] | None = None) -> SelectResult:
    """Every catalogue model with a card, ranked (see the module docstring); the rest listed as skipped."""
    tpc = tokens_per_char or {}
    cands = [judge_model(m, cluster, req, calibration, tpc.get(m.name)) for m in models if m.card is not None]
    cands.sort(key=Candidate.sort_key)
    return SelectResult(cands, [m.name for m in models if m.card is None], req)
