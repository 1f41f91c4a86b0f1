"""What inference asks of a fitted model beyond its members: which degrees of freedom its
tests may use, and whether it supports a method.

Every kind of fit is a :class:`~mixedlm_sklearn._model.FittedModel`; its ``df_methods``
lists the denominator degrees of freedom its fixed-effects tests may use (finite ones only
where the dispersion is estimated), so inference chooses among them instead of asking
what kind of model it has.
"""

from __future__ import annotations

from typing import Sequence

from .._model import FittedModel

__all__ = ["choose_df", "require", "spell_df"]

# Spellings accepted for the asymptotic (normal / chi-square) df.
_ASYMPTOTIC = ("asymptotic", "chi2", "z", "wald")
# R's spellings of the finite-df methods (lmerTest's ddf = "Satterthwaite" / "Kenward-Roger",
# emmeans' lmer.df = "kenward-roger", pbkrtest's "KR"), compared in lower case with "_" as "-".
_ALIASES = {"kr": "kenward-roger", "kenward-roger": "kenward-roger", "kenwardroger": "kenward-roger",
            "kenward roger": "kenward-roger", "satterthwaite": "satterthwaite", "satt": "satterthwaite"}


def spell_df(requested: object) -> object:
    """The canonical spelling of a df method: lower case, ``_`` read as ``-``, R's aliases
    (``"KR"``, ``"Kenward-Roger"``, ``"Satterthwaite"``) mapped; a non-string as it is.

    Examples
    --------
    >>> spell_df("KR"), spell_df("Kenward_Roger"), spell_df("Satterthwaite")
    ('kenward-roger', 'kenward-roger', 'satterthwaite')
    """
    if not isinstance(requested, str):
        return requested
    key = requested.strip().lower().replace("_", "-")
    return _ALIASES.get(key, key)


def choose_df(model: FittedModel, requested: str | None, preference: Sequence[str],
              name: str = "ddf") -> str:
    """The df method of a test: ``requested`` (canonical spelling) if the model supports it
    and it is one of ``preference``, else a ValueError naming what the model supports;
    ``None``: the first of ``preference`` the model supports.

    Examples
    --------
    >>> from mixedlm_sklearn import glmer
    >>> from mixedlm_sklearn.datasets import load_cbpp
    >>> fit = glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", load_cbpp())
    >>> choose_df(fit.model_, None, ("kenward-roger", "satterthwaite", "asymptotic"))
    'asymptotic'
    """
    allowed = [m for m in preference if m in model.df_methods]
    if requested is None:
        if not allowed:
            raise ValueError(f"none of {list(preference)} applies to this model "
                             f"(its tests take {list(model.df_methods)})")
        return allowed[0]
    canonical = spell_df(requested)
    if canonical in _ASYMPTOTIC:
        canonical = "asymptotic"
    if canonical not in preference:
        raise ValueError(f"{name} must be one of {list(preference)} (R's \"Satterthwaite\", "
                         f"\"Kenward-Roger\" and \"KR\" are accepted too), got {requested!r}")
    if canonical not in model.df_methods:
        reason = model.supports(canonical) if canonical != "asymptotic" else None
        if reason is not None and model.scale_estimated:  # the model says why
            raise ValueError(f"{name}={requested!r} does not apply to this model: {reason}")
        raise ValueError(
            f"{name}={requested!r} does not apply to this model: a {model.family.name} model's "
            f"dispersion is fixed, so its tests are asymptotic, z and chi-square "
            f"({name}='chi2' or 'asymptotic')")
    return canonical


def require(model: FittedModel, feature: str) -> FittedModel:
    """``model`` if it supports ``feature`` (:meth:`FittedModel.supports`), else a
    ValueError with the model's reason.

    Examples
    --------
    >>> from mixedlm_sklearn import glmer
    >>> from mixedlm_sklearn.datasets import load_cbpp
    >>> fit = glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", load_cbpp())
    >>> require(fit.model_, "satterthwaite")
    Traceback (most recent call last):
    ...
    ValueError: satterthwaite df need an estimated dispersion; a binomial model's is fixed, so its tests are asymptotic (z and chi-square)
    """
    reason = model.supports(feature)
    if reason is not None:
        raise ValueError(reason)
    return model
