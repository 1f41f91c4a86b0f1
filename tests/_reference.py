"""Access to the R reference fits in ``tests/data/reference``.

The fits were made with lme4 1.1-31 / lmerTest and nlme 3.1-162; the file
layout is described in ``/work/shared/README.md`` (CSV of the model's design
plus a JSON of R's answers). R's JSON writer unboxes length-one vectors, so
``fe_params`` is a bare number when p = 1 and a BLUP a bare number when
q = 1; :func:`single_factor_arrays` undoes that so tests can rely on shapes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REFERENCE_DIR = Path(__file__).resolve().parent / "data" / "reference"

#: One grouping factor: CSV columns ``y``, ``group``, ``X_*``, ``Z_*``.
SINGLE_FACTOR_CASES = (
    "sleepstudy_slopes_reml",
    "sleepstudy_slopes_ml",
    "sleepstudy_intercept_reml",
    "dietox_intercept_reml",
    "dietox_slopes_reml",
    "dyestuff_reml",
    "dyestuff2_singular_reml",
    "orthodont_slopes_ml",
)

#: Several random-effects terms: CSV columns ``y``, ``X_*``, ``g{k}``, ``Z{k}_*``.
CROSSED_CASES = (
    "penicillin_crossed_reml",
    "pastes_nested_reml",
    "insteval_crossed_reml",
)

#: Several terms and a residual variance per stratum (nlme): the multi-term layout plus
#: ``stratum``.
NESTED_VARIDENT_CASES = ("oats_nested_varident_reml",)

#: nlme fits with correlated residuals, in ``structures/`` (columns as in R's data; see
#: tests/engine/test_correlation.py).
STRUCTURE_CASES = ("ovary_ar1_reml", "ovary_ar1_ml", "bodyweight_car1_reml", "orthodont_cs_reml")

#: Inference references of the correlated fits, also in ``structures/`` (JSON only: the
#: data are the STRUCTURE_CASES' CSVs): performance's r2/icc, nlme's anova, and nlme's
#: weighted AR(1) fits of Ovary (``weights = varFixed(~ 1/w)``, the call in the JSON).
STRUCTURE_INFERENCE_FILES = ("r2_correlated.json", "ranova_correlated.json",
                             "ovary_ar1_weighted.json")

#: nlme's correlated fits with a residual variance per stratum (``weights = varIdent(form =
#: ~ 1 | s)``), also in ``structures/``: the R script ``varident_correlated.R`` there writes
#: them (data: ``bodyweight_car1_varident.csv``, ``orthodont_varident.csv``).
VARIDENT_CORRELATED_CASES = tuple(
    f"{data}_{s}_{m}" for data, s in [("bodyweight", "car1_varident"), ("orthodont", "ar1_varident_sex"),
                                      ("orthodont", "cs_varident_sex"), ("orthodont", "ar1_varident_age"),
                                      ("orthodont", "cs_varident_age")]
    for m in ("reml", "ml"))
#: Their data (written and read back by the script) and the script itself.
VARIDENT_CORRELATED_FILES = ("bodyweight_car1_varident.csv", "orthodont_varident.csv",
                             "varident_correlated.R")

#: glmmTMB fits of the families with a parameter (negative binomial, Gamma), also in
#: ``structures/`` (see tests/glmm/test_glmm_families.py).
FAMILY_CASES = ("grouseticks_nb_crossed", "gamma_log_sim")

#: Crossed terms whose JSON comes without its CSV (rebuilt from the bundled data set).
JSON_ONLY_CASES = ("insteval_slope_crossed_reml",)

#: nlme varIdent fits: CSV columns ``y``, ``group``, ``stratum``, ``X_*``, ``Z_*``.
VARIDENT_CASES = (
    "orthodont_varident_reml",
    "dietox_varident_ml",
)

# Columns holding labels; read as str so "308" stays a label and never an int.
_LABEL_COLUMN = re.compile(r"group|stratum|g\d+")

# JSON entries with one value per fixed effect.
_PER_FIXED_EFFECT = ("fe_params", "bse_fe", "t_values", "satterthwaite_df", "satterthwaite_p")


def reference_path(name: str) -> Path:
    """Path of a file in the reference directory, e.g. ``"lrt.json"``."""
    path = REFERENCE_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"no reference file {path}")
    return path


def load_case(name: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Return the design CSV (label columns as str) and the raw JSON of a case."""
    csv_path = reference_path(f"{name}.csv")
    header = pd.read_csv(csv_path, nrows=0).columns
    labels = {column: str for column in header if _LABEL_COLUMN.fullmatch(column)}
    frame = pd.read_csv(csv_path, dtype=labels)
    with reference_path(f"{name}.json").open() as handle:
        answers = json.load(handle)
    return frame, answers


def _vector(value: Any, length: int, what: str) -> np.ndarray:
    array = np.asarray(value, dtype=float).reshape(-1)
    if array.shape != (length,):
        raise ValueError(f"{what}: expected {length} values, got {array.size}")
    return array


def _names(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def single_factor_arrays(name: str) -> dict[str, Any]:
    """Arrays of a single-factor case with the JSON answers normalised.

    Returns
    -------
    dict
        Every JSON entry, with these normalised (p fixed effects, q random
        effects, n rows, m groups):

        - ``fe_params``, ``bse_fe``, ``t_values``, ``satterthwaite_df``,
          ``satterthwaite_p``: arrays of shape (p,);
        - ``wald_ci_fe``: dict with ``lower`` and ``upper`` arrays (p,);
        - ``profile_ci``: dict with ``names`` (list) and ``lower``/``upper``
          arrays;
        - ``x_names``, ``z_names``: lists;
        - ``cov_re``: array (q, q);
        - ``ranef``: DataFrame (m, q), index the group labels (str) in
          lme4's order, columns ``z_names``;
        - ``ranef_condvar``: array (m, q, q), rows in ``ranef``'s order;
        - ``fitted``: array (n,);

        plus ``X`` (n, p), ``y`` (n,), ``groups`` (n,) object array of str,
        ``Z`` (n, q) from the CSV, and ``json``, the raw JSON dict.
    """
    if name not in SINGLE_FACTOR_CASES:
        raise ValueError(f"{name!r} is not a single-factor case")
    frame, answers = load_case(name)
    x_columns = [column for column in frame.columns if column.startswith("X_")]
    z_columns = [column for column in frame.columns if column.startswith("Z_")]
    n, p, q = len(frame), len(x_columns), len(z_columns)

    out = dict(answers)
    for key in _PER_FIXED_EFFECT:
        out[key] = _vector(answers[key], p, key)
    out["wald_ci_fe"] = {
        bound: _vector(answers["wald_ci_fe"][bound], p, f"wald_ci_fe {bound}")
        for bound in ("lower", "upper")
    }
    profile = answers["profile_ci"]
    names = _names(profile["names"])
    out["profile_ci"] = {
        "names": names,
        "lower": _vector(profile["lower"], len(names), "profile_ci lower"),
        "upper": _vector(profile["upper"], len(names), "profile_ci upper"),
    }
    out["x_names"] = _names(answers["x_names"])
    out["z_names"] = _names(answers["z_names"])
    out["cov_re"] = _vector(answers["cov_re"], q * q, "cov_re").reshape(q, q)

    labels = list(answers["ranef"])
    blups = [_vector(answers["ranef"][label], q, f"ranef {label}") for label in labels]
    out["ranef"] = pd.DataFrame(
        np.array(blups),
        index=pd.Index(labels, name=answers["group"]),
        columns=out["z_names"],
    )
    # R flattens matrices column by column.
    out["ranef_condvar"] = np.array(
        [
            _vector(answers["ranef_condvar"][label], q * q, f"ranef_condvar {label}")
            .reshape(q, q, order="F")
            for label in labels
        ]
    )
    out["fitted"] = _vector(answers["fitted"], n, "fitted")

    out["X"] = frame[x_columns].to_numpy(dtype=float)
    out["y"] = frame["y"].to_numpy(dtype=float)
    out["groups"] = frame["group"].to_numpy(dtype=object)
    out["Z"] = frame[z_columns].to_numpy(dtype=float)
    out["json"] = answers
    return out


def fit_single_factor(case: dict[str, Any], **params: Any):
    """``MixedLMRegressor`` fitted to a single-factor case as lme4 fitted it."""
    import warnings

    from mixedlm_sklearn import MixedLMRegressor, SingularFitWarning

    est = MixedLMRegressor(reml=case["reml"], fit_intercept=False, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SingularFitWarning)
        return est.fit(case["X"], case["y"], groups=case["groups"], Z=case["Z"])


# ---- reference/product: what users ask of a fitted model --------------------------------------
# Made by product/make_product_refs.R (its README lists every file and key) or copied unchanged
# from the shared references (PRODUCT_COPIED_CASES). Every JSON has a `note` naming the R call
# behind each key.

PRODUCT_DIR = REFERENCE_DIR / "product"

#: JSON references made by ``make_product_refs.R`` (``many_counts`` and ``many_slopes`` by
#: ``make_many_counts_refs.R``).
PRODUCT_CASES = (
    "emmeans_oats",
    "emmeans_orthodont",
    "emmeans_response_scale",
    "contrasts_coding",
    "update_formulas",
    "model_selection",
    "printed_text",
    "lmm_residuals_predict",
    "glmm_responses",
    "many_responses",
    "many_counts",
    "many_slopes",
)

#: JSON references copied unchanged from the shared product references.
PRODUCT_COPIED_CASES = (
    "glmm_inference_cbpp",
    "glmm_inference_grouseticks",
    "glmm_proportion_weights",
    "lmm_predict_newdata",
    "lmm_weights",
)

#: Data the script wrote and fitted, and the columns that hold labels (read as str, so Oats'
#: ``N`` stays "0", "0.2", ... as in R's coefficient names ``N0.2``).
PRODUCT_DATA = {
    "oats": ("Block", "Variety", "N"),
    "many_responses": ("sample", "donor", "batch"),
    "many_counts": ("sample", "donor"),
    "many_slopes": ("sample", "donor", "batch"),
}


def product_reference(name: str) -> dict[str, Any]:
    """The raw JSON of a product reference, e.g. ``"emmeans_oats"``."""
    if name not in PRODUCT_CASES + PRODUCT_COPIED_CASES:
        raise ValueError(f"{name!r} is not a product reference")
    with (PRODUCT_DIR / f"{name}.json").open(encoding="utf-8") as handle:
        return json.load(handle)


def product_data(name: str) -> pd.DataFrame:
    """A data set the product references were fitted to (``"oats"``, ``"many_responses"``).

    Label columns are str; empty cells (missing responses) are NaN.
    """
    if name not in PRODUCT_DATA:
        raise ValueError(f"{name!r} is not a product data set")
    labels = {column: str for column in PRODUCT_DATA[name]}
    return pd.read_csv(PRODUCT_DIR / f"{name}.csv", dtype=labels)


def r_table(entry: dict[str, Any]) -> pd.DataFrame:
    """A table R wrote column by column, as a DataFrame.

    ``rows`` (when present) becomes the index; every other entry must be a column
    of the same length (a bare value is a one-row column); ``null`` becomes NaN
    in numeric columns.
    """
    columns = {key: value if isinstance(value, list) else [value]
               for key, value in entry.items() if key != "rows"}
    lengths = {len(value) for value in columns.values()}
    if len(lengths) != 1:
        raise ValueError(f"columns of different lengths: {sorted(lengths)}")
    frame = pd.DataFrame(columns)
    for column in frame.columns:
        if frame[column].dtype == object and all(
                value is None or isinstance(value, (int, float)) for value in frame[column]):
            frame[column] = frame[column].astype(float)
    if "rows" in entry:
        rows = entry["rows"]
        frame.index = pd.Index(rows if isinstance(rows, list) else [rows])
    return frame
