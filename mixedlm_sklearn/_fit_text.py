"""A fitted estimator as lme4's ``print(merMod)`` prints it: ``print(fit)``.

The layout and number formatting follow lme4 1.1's ``print.merMod`` (R's ``format`` of each
block, 4 significant digits for standard deviations and fixed effects, AIC/BIC/logLik/
deviance rounded to 4 decimals); the class tag is the estimator's name, and the ``Data:``
line (the name of R's data object) is left out: Python has no such name. A fit from arrays
says so in place of the formula.
"""

from __future__ import annotations

import shutil
import textwrap
from typing import Any

import numpy as np

from ._table import format_real

__all__ = ["fit_text"]

_DIGITS = 4  # lme4: max(3, getOption("digits") - 3)


def _named_vector(names: list[str], values: list[str], gap: int, width: int) -> list[str]:
    """R's print of a named character vector: right-justified fields of a common width,
    as many per line as the width takes."""
    w = max(len(s) for s in names + values)
    per_line = max(1, width // (w + gap))
    lines = []
    for start in range(0, len(names), per_line):
        chunk = slice(start, start + per_line)
        lines.append("".join(f"{n:>{w}}" + " " * gap for n in names[chunk]))
        lines.append("".join(f"{v:>{w}}" + " " * gap for v in values[chunk]))
    return lines


def _covariances(est: Any) -> list[tuple[str, list[str], np.ndarray, int]]:
    """Per random-effects term: (group, column names, covariance, number of levels),
    ordered as lme4 orders them (most levels first)."""
    terms = est.model_.terms
    cov = est.cov_re_
    out = []
    for k, term in enumerate(terms):
        matrix = cov[term.factor] if isinstance(cov, dict) else cov
        levels = est.n_groups_[term.factor] if isinstance(est.n_groups_, dict) else est.n_groups_
        matrix = np.atleast_2d(matrix)
        if getattr(term, "diagonal", False) and len(term.z_names) > 1:
            # lme4 fits (x || g) as (1 | g) + (0 + x | g): groups g, g.1, ...
            for j, column in enumerate(term.z_names):
                group = term.factor if j == 0 else f"{term.factor}.{j}"
                out.append((group, [column], matrix[j:j + 1, j:j + 1], int(levels), k + j / 100))
            continue
        out.append((term.factor, list(term.z_names), matrix, int(levels), k))
    out.sort(key=lambda item: (-item[3], item[4]))
    return [item[:4] for item in out]


def _random_effects(est: Any, gaussian: bool) -> list[str]:
    rows = []  # (group, name, sd, correlations)
    sds = []
    for group, names, cov, _ in _covariances(est):
        sd = np.sqrt(np.clip(np.diag(cov), 0.0, None))
        with np.errstate(divide="ignore", invalid="ignore"):
            cor = cov / np.outer(sd, sd)
        for j, name in enumerate(names):
            rows.append([group if j == 0 else "", name, None,
                         [cor[j, i] for i in range(j)]])
            sds.append(sd[j])
    if gaussian:
        rows.append(["Residual", "", None, []])
        sds.append(float(np.sqrt(est.scale_)))
    for row, text in zip(rows, format_real(sds, _DIGITS)):
        row[2] = text
    n_cor = max((len(r[3]) for r in rows), default=0)
    cor_text = [[("" if not np.isfinite(c) else f"{round(c, 2) + 0.0:.2f}") for c in r[3]]
                + [""] * (n_cor - len(r[3])) for r in rows]
    header = ["Groups", "Name", "Std.Dev."] + (["Corr"] + [""] * (n_cor - 1) if n_cor else [])
    table = [[r[0], r[1], r[2]] + c for r, c in zip(rows, cor_text)]
    widths = [max(len(header[j]), *(len(t[j]) for t in table)) for j in range(len(header))]
    sd_width = max(len(r[2]) for r in rows)

    def line(cells: list[str], is_header: bool) -> str:
        out = []
        for j, cell in enumerate(cells):
            if j == 2 and not is_header:  # R's format pads the numbers to a common width
                cell = f"{cell:>{sd_width}}"
            out.append(f"{cell:<{widths[j]}}" if j < 3 or is_header else f"{cell:>{widths[j]}}")
        return " " + " ".join(out)

    return [line(header, True)] + [line(t, False) for t in table]


def fit_text(est: Any, width: int | None = None) -> str:
    """The text of ``print(fit)`` (lme4's ``print(merMod)``) of a fitted estimator.

    Parameters
    ----------
    est : fitted MixedLMRegressor, MixedGLMClassifier or MixedGLMRegressor
    width : int, optional
        The line width (default the terminal's, 80 when unknown).

    Returns
    -------
    str
        Header, formula, fit criteria, random effects, numbers of observations and
        groups, fixed effects, and a line for a singular or unconverged fit.
    """
    width = width or shutil.get_terminal_size((80, 24)).columns
    name = type(est).__name__
    gaussian = not hasattr(est, "deviance_")
    if gaussian:
        how = "REML" if est.reml else "maximum likelihood "
        lines = [f"Linear mixed model fit by {how} [{name}]"]
    else:
        n_agq = est.model_.deviance.n_agq
        method = ("(Laplace Approximation)" if n_agq == 1 else
                  f"(Adaptive Gauss-Hermite Quadrature, nAGQ = {n_agq})")
        lines = textwrap.wrap(f"Generalized linear mixed model fit by maximum likelihood "
                              f"{method} [{name}]", width=width - 1, subsequent_indent="  ")
        dev = est.model_.deviance
        lines.append(f" Family: {dev.family.describe()}  ( {dev.link.name} )")
    formula = getattr(est, "formula", None)
    if formula is not None and getattr(est, "model_frame_", None) is not None:
        # the formula as given when it names the response, else with y's name on the left
        shown = formula if formula.split("~")[0].strip() else est.model_frame_.formula
        lines.append(f"Formula: {shown}")
    else:
        k = len(est.model_.terms)
        lines.append(f"Fitted from arrays: {len(est.fe_params_)} fixed effects, {k} "
                     f"random-effects term{'s' if k != 1 else ''}")
    n_obs = est.model_.n_obs if hasattr(est.model_, "n_obs") else est.model_.deviance.n
    if gaussian and est.reml:
        value = format_real([round(-2.0 * est.llf_, 4)], 7)[0]
        lines.append(f"REML criterion at convergence: {value}")
    else:
        names = ["AIC", "BIC", "logLik", "deviance", "df.resid"]
        values = [round(v, 4) for v in (est.aic_, est.bic_, est.llf_, -2.0 * est.llf_)]
        texts = format_real(values, 7) + [str(int(n_obs - est.df_model_))]
        lines.extend(_named_vector(names, texts, 1, width))
    if len(est.model_.terms):
        lines.append("Random effects:")
        lines.extend(_random_effects(est, gaussian))
        groups = "; ".join(f"{group}, {levels}" for group, _, _, levels in _covariances(est)
                           if not _is_split(group, est))
        lines.append(f"Number of obs: {n_obs}, groups:  {groups}")
    else:
        lines.append(f"Number of obs: {n_obs}")
    correlation = getattr(est.model_, "correlation", None)
    if correlation is not None:  # nlme's print(lme): "Correlation Structure: AR(1)" block
        lines.append(f"Residual correlation: {correlation.describe()}")
    lines.append("Fixed Effects:")
    fe = est.fe_params_
    lines.extend(_named_vector(list(map(str, fe.index)), format_real(fe.to_numpy(), _DIGITS),
                               2, width))
    if getattr(est, "singular_", False):
        lines.append("boundary (singular) fit: a variance is 0 or a correlation +-1")
    if not getattr(est, "converged_", True):
        lines.append("the optimiser did not converge (see the ConvergenceWarning of fit)")
    return "\n".join(lines)


def _is_split(group: str, est: Any) -> bool:
    """A ``(x || g)`` column term ``g.1``, ``g.2`` (lme4 counts its groups once, as ``g``)."""
    base, _, suffix = group.rpartition(".")
    names = {t.factor for t in est.model_.terms}
    return bool(base) and suffix.isdigit() and base in names and group not in names
