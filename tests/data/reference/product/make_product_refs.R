# R references for what users ask of a fitted model (issues 23, 24 and 28): emmeans with by=,
# formula specs, regrid/type = "response" and joint_tests; contrast codings; update();
# AIC/BIC/anova model tables; printed text; LMM residuals and partial re.form predictions;
# glmer responses of other types; many responses with the same design (variancePartition-style
# variance fractions, per-response fixed-effect tables with Benjamini-Hochberg p).
#
# Run from the repository root (about three minutes):
#   Rscript tests/data/reference/product/make_product_refs.R
# It reads the package's own data files (mixedlm_sklearn/datasets/data/*.csv) with read.csv,
# writes oats.csv (nlme's Oats) and many_responses.csv (simulated here) next to itself, reads
# them back and fits what it read, and writes one JSON per topic. Deterministic: two runs give
# identical files (the only clock in the output, PBmodcomp's time, is fixed at 0 before printing).
# bobyqa's optimum moves by ~1e-8..2e-7 in theta (logLik < 1e-12) when other code runs before
# it in the session, so editing one section can change such last digits in later ones.
#
# Every fit is run to the optimum: lmer is fitted with bobyqa (rhoend 1e-12) and with a tight
# Nelder-Mead and the higher logLik is kept; glmer likewise with tolPwrss 1e-12 (lme4's default
# PIRLS tolerance 1e-7 leaves the Laplace logLik short). lme4's default fit is recorded beside
# (fit_info$candidates) so the gap is visible. Written for R 4.2.2, lme4 1.1-31, lmerTest 3.1-3,
# pbkrtest 0.5.2, emmeans 1.8.4-1, performance 0.10.2, car 3.1-1 (Debian packages).

suppressMessages({
  library(lme4); library(lmerTest); library(pbkrtest); library(emmeans)
  library(performance); library(car); library(jsonlite)
})
options(width = 80, digits = 7, contrasts = c("contr.treatment", "contr.poly"),
        warn = 1, stringsAsFactors = FALSE)

out_dir <- "tests/data/reference/product"
data_dir <- "mixedlm_sklearn/datasets/data"
if (!dir.exists(out_dir)) stop("run from the repository root")

# ---- versions ------------------------------------------------------------------------------
pkg_version <- function(p) as.character(packageVersion(p))
apt_versions <- function() {
  pk <- c("r-base-core", "r-cran-lme4", "r-cran-lmertest", "r-cran-pbkrtest", "r-cran-emmeans",
          "r-cran-performance", "r-cran-insight", "r-cran-car", "r-cran-matrix", "r-cran-nlme",
          "r-cran-jsonlite")
  v <- tryCatch(system2("dpkg-query", c("-W", "-f='${Package} ${Version}\\n'", pk),
                        stdout = TRUE, stderr = FALSE), error = function(e) character())
  v <- strsplit(v, " ")
  setNames(lapply(v, `[`, 2), vapply(v, `[`, "", 1))
}
VERSIONS <- list(
  R = paste(R.version$major, R.version$minor, sep = "."),
  lme4 = pkg_version("lme4"), lmerTest = pkg_version("lmerTest"),
  pbkrtest = pkg_version("pbkrtest"), emmeans = pkg_version("emmeans"),
  performance = pkg_version("performance"), insight = pkg_version("insight"),
  car = pkg_version("car"), Matrix = pkg_version("Matrix"), nlme = pkg_version("nlme"),
  jsonlite = pkg_version("jsonlite"), apt = apt_versions())

# ---- data, prepared as /work/shared/README.md says -------------------------------------------
rd <- function(name) read.csv(file.path(data_dir, paste0(name, ".csv")))
sleepstudy <- rd("sleepstudy"); sleepstudy$Subject <- factor(sleepstudy$Subject)
Orthodont <- rd("orthodont")
Orthodont$Subject <- factor(Orthodont$Subject)
Orthodont$Sex <- factor(Orthodont$Sex, levels = c("Male", "Female"))
cbpp <- rd("cbpp"); cbpp$herd <- factor(cbpp$herd); cbpp$period <- factor(cbpp$period)
Penicillin <- rd("penicillin")
Penicillin$plate <- factor(Penicillin$plate); Penicillin$sample <- factor(Penicillin$sample)
grouseticks <- rd("grouseticks")
for (v in c("INDEX", "BROOD", "YEAR", "LOCATION")) grouseticks[[v]] <- factor(grouseticks[[v]])
VerbAgg <- rd("verbagg")
for (v in c("id", "item", "Gender", "btype", "situ", "mode")) VerbAgg[[v]] <- factor(VerbAgg[[v]])

DATA_NOTE <- paste(
  "Data read with read.csv from mixedlm_sklearn/datasets/data/NAME.csv (identical to",
  "/work/shared/datasets). Factors: sleepstudy Subject, cbpp herd and period, Penicillin plate",
  "and sample, grouseticks INDEX/BROOD/YEAR/LOCATION, VerbAgg id/item/Gender/btype/situ/mode,",
  "Orthodont Subject: factor() of the column as read.csv gives it (integer-like codes sorted",
  "numerically, strings alphabetically); Orthodont Sex = factor(Sex, levels = c('Male', 'Female'))",
  "(nlme's order: Male is the reference); grouseticks cHEIGHT is the CSV's column",
  "(HEIGHT - mean(HEIGHT)). Oats: oats.csv in this directory (nlme::Oats written by this script",
  "with columns Block, Variety, nitro, N, yield, where N = the string of nitro: '0', '0.2',",
  "'0.4', '0.6'), read back with read.csv(colClasses = c(N = 'character')); Block, Variety, N",
  "= factor() (alphabetical levels; Block I..VI, Variety Golden Rain, Marvellous, Victory).",
  "The data objects are named as R users name them (sleepstudy, Orthodont, cbpp, Penicillin,",
  "grouseticks, VerbAgg, Oats) so printed calls read 'Data: sleepstudy'.")

# nlme's Oats, exported so the tests fit what R fitted.
oats_raw <- as.data.frame(nlme::Oats)
oats_out <- data.frame(Block = as.character(oats_raw$Block), Variety = as.character(oats_raw$Variety),
                       nitro = oats_raw$nitro, N = as.character(oats_raw$nitro), yield = oats_raw$yield)
write.csv(oats_out, file.path(out_dir, "oats.csv"), row.names = FALSE)
Oats <- read.csv(file.path(out_dir, "oats.csv"), colClasses = c(N = "character"))
Oats$Block <- factor(Oats$Block); Oats$Variety <- factor(Oats$Variety); Oats$N <- factor(Oats$N)
stopifnot(identical(levels(Oats$N), c("0", "0.2", "0.4", "0.6")), nrow(Oats) == 72)

# ---- JSON helpers --------------------------------------------------------------------------
arr <- function(x) if (is.null(x)) I(list()) else I(unname(x))  # a JSON array, even of length 0 or 1
null_if_empty <- function(x) if (length(x)) x else NULL
lines_of <- function(x) I(capture.output(print(x)))

tab <- function(df) {
  # a table column by column; factors as strings; row names only when they mean something
  df <- as.data.frame(df, stringsAsFactors = FALSE)
  out <- list()
  if (.row_names_info(df) > 0) out$rows <- arr(rownames(df))
  for (nm in colnames(df)) {
    v <- df[[nm]]
    out[[nm]] <- arr(if (is.factor(v)) as.character(v) else as.vector(v))
  }
  out
}
mat <- function(m) {
  m <- as.matrix(m)
  out <- list(rows = null_if_empty(arr(rownames(m))), cols = null_if_empty(arr(colnames(m))),
              values = unname(m))
  out[!vapply(out, is.null, TRUE)]
}
deparse1l <- function(x) paste(trimws(deparse(x, width.cutoff = 500L)), collapse = " ")
write_ref <- function(x, name) {
  write_json(x, file.path(out_dir, name), digits = NA, auto_unbox = TRUE, pretty = TRUE,
             na = "null")
  cat("wrote", name, "\n")
}

# Evaluate an expression, keeping its value, its warnings and its messages.
catching <- function(expr) {
  warns <- character(); msgs <- character()
  value <- withCallingHandlers(expr,
    warning = function(w) { warns <<- c(warns, conditionMessage(w)); invokeRestart("muffleWarning") },
    message = function(m) { msgs <<- c(msgs, trimws(conditionMessage(m))); invokeRestart("muffleMessage") })
  list(value = value, warnings = arr(warns), messages = arr(msgs))
}
error_of <- function(expr) tryCatch({ force(expr); NULL }, error = function(e) conditionMessage(e))

# ---- fitting to the optimum ----------------------------------------------------------------
ctl_lmm_bobyqa <- lmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-12, maxfun = 1e5))
ctl_lmm_nelder_mead <- lmerControl(optimizer = "Nelder_Mead",
  optCtrl = list(maxfun = 1e5, FtolAbs = 1e-12, FtolRel = 1e-14, XtolRel = 1e-12))
ctl_lmm_default <- lmerControl()
ctl_glmm_bobyqa <- glmerControl(optimizer = "bobyqa", tolPwrss = 1e-12,
                                optCtrl = list(rhoend = 1e-12, maxfun = 1e5))
ctl_glmm_nelder_mead <- glmerControl(optimizer = "Nelder_Mead", tolPwrss = 1e-12,
  optCtrl = list(maxfun = 1e5, FtolAbs = 1e-12, FtolRel = 1e-14, XtolRel = 1e-12))
ctl_glmm_default <- glmerControl()
CONTROL_TEXT <- list(
  ctl_lmm_bobyqa = "lmerControl(optimizer = 'bobyqa', optCtrl = list(rhoend = 1e-12, maxfun = 1e5))",
  ctl_lmm_nelder_mead = "lmerControl(optimizer = 'Nelder_Mead', optCtrl = list(maxfun = 1e5, FtolAbs = 1e-12, FtolRel = 1e-14, XtolRel = 1e-12))",
  ctl_lmm_default = "lmerControl() (lme4's defaults)",
  ctl_glmm_bobyqa = "glmerControl(optimizer = 'bobyqa', tolPwrss = 1e-12, optCtrl = list(rhoend = 1e-12, maxfun = 1e5))",
  ctl_glmm_nelder_mead = "glmerControl(optimizer = 'Nelder_Mead', tolPwrss = 1e-12, optCtrl = list(maxfun = 1e5, FtolAbs = 1e-12, FtolRel = 1e-14, XtolRel = 1e-12))",
  ctl_glmm_default = "glmerControl() (lme4's defaults)")
FIT_NOTE <- paste(
  "Every lmer fit: the higher logLik of ctl_lmm_bobyqa and ctl_lmm_nelder_mead (fit_info$kept names",
  "it; fit_info$candidates gives every candidate's logLik, including lme4's default control, and",
  "fit_info$default_shortfall = kept logLik - default logLik). glmer the same with ctl_glmm_*. The",
  "controls are in `controls`. lmer is lmerTest::lmer (class lmerModLmerTest, the fit is lme4's).")

# A model call as a user writes it, with the data named (so print says 'Data: sleepstudy').
model_call <- function(fun, formula, data, control, ...) {
  extra <- list(...)
  cl <- as.call(c(list(fun, formula = formula, data = as.name(data)), extra,
                  list(control = as.name(control))))
  cl
}

fit_best <- function(kind, formula, data, ..., candidates = c("bobyqa", "nelder_mead", "default")) {
  fun <- if (kind == "lmm") quote(lmerTest::lmer) else quote(lme4::glmer)
  fits <- list(); info <- list()
  for (k in candidates) {
    ctl <- paste0("ctl_", kind, "_", k)
    cl <- model_call(fun, formula, data, ctl, ...)
    res <- catching(eval(cl, globalenv()))
    m <- res$value
    fits[[k]] <- m
    info[[k]] <- list(control = CONTROL_TEXT[[ctl]], llf = as.numeric(logLik(m)),
                      theta = arr(getME(m, "theta")), fe_params = arr(fixef(m)),
                      warnings = res$warnings, messages = res$messages,
                      lme4_messages = arr(unlist(m@optinfo$conv$lme4$messages)))
  }
  tight <- intersect(c("bobyqa", "nelder_mead"), candidates)
  lls <- vapply(tight, function(k) info[[k]]$llf, 0)
  kept <- tight[which.max(lls)]
  fi <- list(kept = kept, candidates = info)
  if ("default" %in% candidates) fi$default_shortfall <- info[[kept]]$llf - info$default$llf
  list(model = fits[[kept]], info = fi, call = deparse1l(model_call(fun, formula, data,
       paste0("ctl_", kind, "_", kept), ...)))
}

varcorr <- function(m) {
  vc <- as.data.frame(VarCorr(m))
  list(grp = arr(vc$grp), var1 = arr(vc$var1), var2 = arr(vc$var2), vcov = arr(vc$vcov),
       sdcor = arr(vc$sdcor))
}
fit_entry <- function(fb) {
  m <- fb$model
  cf <- summary(m)$coefficients
  out <- list(call = fb$call, formula = deparse1l(formula(m)), REML = isREML(m),
              family = if (isGLMM(m)) family(m)$family else "gaussian",
              link = if (isGLMM(m)) family(m)$link else "identity",
              fe_names = arr(names(fixef(m))), fe_params = arr(fixef(m)),
              bse_fe = arr(sqrt(diag(as.matrix(vcov(m))))),
              coefficients = tab(as.data.frame(cf)),
              vcov = mat(vcov(m)), theta = arr(getME(m, "theta")), sigma = sigma(m),
              varcorr = varcorr(m), llf = as.numeric(logLik(m)),
              df_model = attr(logLik(m), "df"), aic = AIC(m), bic = BIC(m),
              deviance = if (isGLMM(m)) deviance(m) else NULL,
              reml_criterion = if (isREML(m)) REMLcrit(m) else NULL,
              nobs = nobs(m), ngrps = as.list(ngrps(m)), singular = isSingular(m),
              fit_info = fb$info)
  out[!vapply(out, is.null, TRUE)]
}

# ---- emmeans helpers -----------------------------------------------------------------------
emm_table <- function(obj, ...) {
  s <- summary(obj, ...)
  list(table = tab(as.data.frame(s)), by = null_if_empty(arr(attr(s, "by.vars"))),
       notes = arr(attr(s, "mesg")), text = lines_of(s))
}
emm_list <- function(el) list(emmeans = emm_table(el$emmeans), contrasts = emm_table(el$contrasts))
linfct <- function(e) list(grid = tab(e@grid[, setdiff(names(e@grid), ".wgt."), drop = FALSE]),
                           L = mat(e@linfct))
# joint_tests stores F.ratio rounded to 3 decimals and est.fcns to 7 digits; F_from_est_fcns
# recomputes F = (L b)' (L V L')^-1 (L b) / rank(L) from the stored L with V = the covariance
# emmeans used (ref_grid(m, ...)@V: Kenward-Roger-adjusted for lmer by default), b = fixef.
jt_entry <- function(expr, m, ...) {
  r <- catching(expr); jt <- r$value
  fcns <- attr(jt, "est.fcns")
  rg <- ref_grid(m, ...)
  b <- rg@bhat; V <- rg@V
  f_of <- function(L) {
    if (is.list(L)) return(lapply(L, f_of))   # with by=: one L per by-level
    L <- as.matrix(L); est <- L %*% b
    as.numeric(t(est) %*% solve(L %*% V %*% t(L), est)) / qr(L)$rank
  }
  mat_of <- function(L) if (is.list(L)) lapply(L, mat_of) else mat(L)
  list(table = tab(as.data.frame(jt)), text = lines_of(jt),
       est_fcns = lapply(fcns, mat_of), F_from_est_fcns = lapply(fcns, f_of),
       messages = r$messages)
}
emm_of <- function(expr) {
  # an emmeans result with the messages it emitted when made (e.g. emmeans' interaction NOTE)
  r <- catching(expr)
  out <- if (inherits(r$value, "emm_list")) emm_list(r$value) else emm_table(r$value)
  if (length(r$messages)) out$messages <- r$messages
  if (length(r$warnings)) out$warnings <- r$warnings
  out
}

controls <- CONTROL_TEXT
common <- function(name, formula) list(name = name, formula = formula, versions = VERSIONS,
                                       data_note = DATA_NOTE, controls = controls)

# =============================================================================================
# 1a. emmeans on the Oats split-plot: by=, formula specs, adjustments within by-groups, joint_tests
# =============================================================================================
f_oats <- yield ~ N * Variety + (1 | Block/Variety)
fb_oats <- fit_best("lmm", f_oats, "Oats")
m_oats <- fb_oats$model
e_nv <- emmeans(m_oats, ~ N | Variety)
x <- common("emmeans_oats", deparse1l(f_oats))
x$fit <- fit_entry(fb_oats)
x$anova_type3_satterthwaite <- tab(anova(m_oats))
x$anova_type3_kenward_roger <- tab(anova(m_oats, ddf = "Kenward-Roger"))
x$emmeans_N_by_Variety <- emm_table(e_nv)
x$emmeans_N_by_Variety_linfct <- linfct(e_nv)
x$emmeans_N_by_Variety_satterthwaite <- emm_table(emmeans(m_oats, ~ N | Variety, lmer.df = "satterthwaite"))
x$emmeans_N_by_argument <- emm_table(emmeans(m_oats, ~ N, by = "Variety"))
x$pairs_N_by_Variety <- lapply(setNames(nm = c("tukey", "holm", "bonferroni", "none")),
                               function(a) emm_table(pairs(e_nv, adjust = a)))
x$pairs_N_by_Variety_reverse <- emm_table(pairs(e_nv, reverse = TRUE))
x$pairwise_N_by_Variety <- emm_list(emmeans(m_oats, pairwise ~ N | Variety))
x$revpairwise_N_by_Variety <- emm_list(emmeans(m_oats, revpairwise ~ N | Variety))
x$contrast_trt_vs_ctrl_by_Variety <- emm_table(contrast(e_nv, "trt.vs.ctrl"))
x$contrast_consec_by_Variety_holm <- emm_table(contrast(e_nv, "consec", adjust = "holm"))
e_n <- suppressMessages(emmeans(m_oats, ~ N))
x$emmeans_N <- emm_of(emmeans(m_oats, ~ N))
x$emmeans_N_linfct <- linfct(e_n)
x$pairs_N <- emm_table(pairs(e_n))
x$emmeans_N_x_Variety <- emm_table(emmeans(m_oats, ~ N * Variety))
x$joint_tests <- jt_entry(joint_tests(m_oats), m_oats)
x$joint_tests_by_Variety <- jt_entry(joint_tests(m_oats, by = "Variety"), m_oats)
x$joint_tests_satterthwaite <- jt_entry(joint_tests(m_oats, lmer.df = "satterthwaite"), m_oats,
                                        lmer.df = "satterthwaite")
x$note <- list(
  fit = paste("m <- lmerTest::lmer(yield ~ N * Variety + (1 | Block/Variety), data = Oats, control = ctl)",
              "(ctl: see fit_info; N = factor of nitro). coefficients = summary(m)$coefficients",
              "(Satterthwaite df); vcov = vcov(m); varcorr = as.data.frame(VarCorr(m));", FIT_NOTE),
  anova_type3_satterthwaite = "anova(m) (lmerTest: type III, Satterthwaite)",
  anova_type3_kenward_roger = "anova(m, ddf = 'Kenward-Roger')",
  emmeans_N_by_Variety = paste("e <- emmeans(m, ~ N | Variety) (emmeans' default df for lmer: Kenward-Roger);",
    "table = as.data.frame(summary(e)); by = attr(summary(e), 'by.vars'); notes = attr(summary(e), 'mesg');",
    "text = capture.output(print(summary(e))). Every emmeans entry below has these four keys."),
  emmeans_N_by_Variety_linfct = "grid = e@grid (without .wgt.), L = e@linfct (one row per grid row)",
  emmeans_N_by_Variety_satterthwaite = "emmeans(m, ~ N | Variety, lmer.df = 'satterthwaite')",
  emmeans_N_by_argument = "emmeans(m, ~ N, by = 'Variety') (the same as ~ N | Variety)",
  pairs_N_by_Variety = "pairs(e, adjust = a) for a in tukey (the default), holm, bonferroni, none: within each Variety",
  pairs_N_by_Variety_reverse = "pairs(e, reverse = TRUE)",
  pairwise_N_by_Variety = "emmeans(m, pairwise ~ N | Variety): $emmeans and $contrasts",
  revpairwise_N_by_Variety = "emmeans(m, revpairwise ~ N | Variety): $emmeans and $contrasts",
  contrast_trt_vs_ctrl_by_Variety = "contrast(e, 'trt.vs.ctrl') (default adjust: dunnettx)",
  contrast_consec_by_Variety_holm = "contrast(e, 'consec', adjust = 'holm')",
  emmeans_N = "e_n <- emmeans(m, ~ N) (averaged over Variety)",
  emmeans_N_linfct = "e_n@grid, e_n@linfct",
  pairs_N = "pairs(e_n)",
  emmeans_N_x_Variety = "emmeans(m, ~ N * Variety)",
  joint_tests = paste("jt <- joint_tests(m); table = as.data.frame(jt) (emmeans rounds F.ratio to 3",
    "decimals; the p.value is from the unrounded F); text = capture.output(print(jt)); est_fcns =",
    "attr(jt, 'est.fcns') (per term, the rows of L in the coefficients' basis, rounded by emmeans to 7",
    "digits); F_from_est_fcns = (L b)' (L V L')^-1 (L b) / rank(L) with V = ref_grid(m)@V (the",
    "Kenward-Roger-adjusted vcov emmeans used), b = fixef(m): F unrounded up to L's 7 digits.",
    "Every joint_tests entry has these keys (and messages emitted)."),
  joint_tests_by_Variety = "joint_tests(m, by = 'Variety')",
  joint_tests_satterthwaite = "joint_tests(m, lmer.df = 'satterthwaite')")
write_ref(x, "emmeans_oats.json")

# =============================================================================================
# 1b. emmeans on Orthodont with at= and a covariate in the by-variable
# =============================================================================================
f_orth <- distance ~ age * Sex + (age | Subject)
fb_orth <- fit_best("lmm", f_orth, "Orthodont")
m_orth <- fb_orth$model
ages <- list(age = c(8, 10, 12, 14))
e_sa <- emmeans(m_orth, ~ Sex | age, at = ages)
x <- common("emmeans_orthodont", deparse1l(f_orth))
x$fit <- fit_entry(fb_orth)
x$emmeans_Sex_by_age <- emm_table(e_sa)
x$emmeans_Sex_by_age_linfct <- linfct(e_sa)
x$pairwise_Sex_by_age <- emm_list(emmeans(m_orth, pairwise ~ Sex | age, at = ages))
x$emmeans_age_by_Sex <- emm_table(emmeans(m_orth, ~ age | Sex, at = list(age = c(8, 14))))
x$pairs_age_by_Sex <- emm_table(pairs(emmeans(m_orth, ~ age | Sex, at = list(age = c(8, 14)))))
x$emmeans_Sex <- emm_of(emmeans(m_orth, ~ Sex))
x$joint_tests <- jt_entry(joint_tests(m_orth), m_orth)
x$joint_tests_by_Sex <- jt_entry(joint_tests(m_orth, by = "Sex"), m_orth)
x$note <- list(
  fit = paste("m <- lmerTest::lmer(distance ~ age * Sex + (age | Subject), data = Orthodont, control = ctl)",
              "(REML; Sex levels Male, Female).", FIT_NOTE),
  emmeans_Sex_by_age = "e <- emmeans(m, ~ Sex | age, at = list(age = c(8, 10, 12, 14))) (Kenward-Roger df)",
  emmeans_Sex_by_age_linfct = "e@grid, e@linfct",
  pairwise_Sex_by_age = "emmeans(m, pairwise ~ Sex | age, at = list(age = c(8, 10, 12, 14)))",
  emmeans_age_by_Sex = "emmeans(m, ~ age | Sex, at = list(age = c(8, 14)))",
  pairs_age_by_Sex = "pairs(emmeans(m, ~ age | Sex, at = list(age = c(8, 14))))",
  emmeans_Sex = "emmeans(m, ~ Sex) (age at its mean, 11; emmeans prints a NOTE about the interaction)",
  joint_tests = "joint_tests(m) (covariates: emmeans' cov.reduce = meanint, age at mean -+ 1)",
  joint_tests_by_Sex = "joint_tests(m, by = 'Sex')")
write_ref(x, "emmeans_orthodont.json")

# =============================================================================================
# 1c. The response scale: regrid / type = "response" on glmer (cbpp) and on lmer with log(y),
#     sqrt(y); joint_tests on glmer (cbpp, grouseticks)
# =============================================================================================
f_cbpp <- cbind(incidence, size - incidence) ~ period + (1 | herd)
fb_cbpp <- fit_best("glmm", f_cbpp, "cbpp", family = quote(binomial))
m_cbpp <- fb_cbpp$model
f_gt <- TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | LOCATION)
fb_gt <- fit_best("glmm", f_gt, "grouseticks", family = quote(poisson))
m_gt <- fb_gt$model
f_oats_log <- log(yield) ~ N + Variety + (1 | Block/Variety)
fb_oats_log <- fit_best("lmm", f_oats_log, "Oats")
m_oats_log <- fb_oats_log$model
f_oats_sqrt <- sqrt(yield) ~ N + Variety + (1 | Block/Variety)
fb_oats_sqrt <- fit_best("lmm", f_oats_sqrt, "Oats")
m_oats_sqrt <- fb_oats_sqrt$model

e_cb <- emmeans(m_cbpp, ~ period)
rg_cb <- regrid(e_cb)
x <- common("emmeans_response_scale",
            list(cbpp = deparse1l(f_cbpp), grouseticks = deparse1l(f_gt),
                 oats_log = deparse1l(f_oats_log), oats_sqrt = deparse1l(f_oats_sqrt)))
x$fits <- list(cbpp = fit_entry(fb_cbpp), grouseticks = fit_entry(fb_gt),
               oats_log = fit_entry(fb_oats_log), oats_sqrt = fit_entry(fb_oats_sqrt))
x$cbpp <- list(
  emmeans_link = emm_table(e_cb),
  emmeans_response = emm_of(emmeans(m_cbpp, ~ period, type = "response")),
  summary_type_response = emm_table(e_cb, type = "response"),
  regrid = emm_table(rg_cb),
  regrid_linfct = linfct(rg_cb),
  regrid_pairs = emm_table(pairs(rg_cb)),
  regrid_pairs_holm = emm_table(pairs(rg_cb, adjust = "holm")),
  pairs_response = emm_table(pairs(e_cb, type = "response")),
  pairwise_response = emm_of(emmeans(m_cbpp, pairwise ~ period, type = "response")),
  joint_tests = jt_entry(joint_tests(m_cbpp), m_cbpp))
x$grouseticks <- list(
  emmeans_response = emm_of(emmeans(m_gt, ~ YEAR, type = "response")),
  regrid_pairs = emm_table(pairs(regrid(emmeans(m_gt, ~ YEAR)))),
  joint_tests = jt_entry(joint_tests(m_gt), m_gt))
e_log <- emmeans(m_oats_log, ~ N)
x$oats_log <- list(
  emmeans_link = emm_table(e_log),
  emmeans_response = emm_of(emmeans(m_oats_log, ~ N, type = "response")),
  pairs_response = emm_table(pairs(e_log, type = "response")),
  regrid = emm_table(regrid(e_log)),
  regrid_pairs = emm_table(pairs(regrid(e_log))),
  emmeans_N_by_Variety_response = emm_of(emmeans(m_oats_log, ~ N | Variety, type = "response")),
  joint_tests = jt_entry(joint_tests(m_oats_log), m_oats_log))
e_sqrt <- emmeans(m_oats_sqrt, ~ N)
x$oats_sqrt <- list(
  emmeans_response = emm_of(emmeans(m_oats_sqrt, ~ N, type = "response")),
  pairs_response = emm_of(pairs(e_sqrt, type = "response")),
  regrid = emm_table(regrid(e_sqrt)),
  regrid_pairs = emm_table(pairs(regrid(e_sqrt))))
x$note <- list(
  fits = paste("cbpp: glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), data = cbpp,",
    "family = binomial, control = ctl); grouseticks: glmer(TICKS ~ YEAR + cHEIGHT + (1 | BROOD) +",
    "(1 | LOCATION), data = grouseticks, family = poisson, control = ctl); oats_log:",
    "lmerTest::lmer(log(yield) ~ N + Variety + (1 | Block/Variety), data = Oats, control = ctl);",
    "oats_sqrt: the same with sqrt(yield).", FIT_NOTE),
  cbpp = paste("e <- emmeans(m, ~ period); emmeans_link = summary(e) (logit scale, df Inf);",
    "emmeans_response = emmeans(m, ~ period, type = 'response') (prob: back-transformed, SE by the",
    "delta method, CI = linkinv of the link CI); summary_type_response = summary(e, type = 'response');",
    "rg <- regrid(e): regrid = summary(rg) (prob with CI prob -+ z SE, no longer back-transformed);",
    "regrid_linfct = rg@grid, rg@linfct; regrid_pairs = pairs(rg) (differences of probabilities,",
    "Tukey); regrid_pairs_holm = pairs(rg, adjust = 'holm'); pairs_response = pairs(e, type =",
    "'response') (odds ratios); pairwise_response = emmeans(m, pairwise ~ period, type = 'response');",
    "joint_tests = joint_tests(m) (df2 = Inf)"),
  grouseticks = paste("emmeans_response = emmeans(m, ~ YEAR, type = 'response') (rate); regrid_pairs =",
    "pairs(regrid(emmeans(m, ~ YEAR))) (differences of rates); joint_tests = joint_tests(m) (cHEIGHT:",
    "a covariate row)"),
  oats_log = paste("e <- emmeans(m, ~ N) (log scale; emmeans finds the log() in the formula);",
    "emmeans_response = emmeans(m, ~ N, type = 'response') (column 'response'); pairs_response =",
    "pairs(e, type = 'response') (ratios); regrid = summary(regrid(e)); regrid_pairs =",
    "pairs(regrid(e)) (differences on the yield scale); emmeans_N_by_Variety_response =",
    "emmeans(m, ~ N | Variety, type = 'response'); joint_tests = joint_tests(m)"),
  oats_sqrt = paste("e <- emmeans(m, ~ N); emmeans_response = emmeans(m, ~ N, type = 'response');",
    "pairs_response = pairs(e, type = 'response') (sqrt is not back-transformable for differences:",
    "see its notes); regrid = summary(regrid(e)); regrid_pairs = pairs(regrid(e))"))
write_ref(x, "emmeans_response_scale.json")

# =============================================================================================
# 1d. Contrast codings: contrasts = list(x = "contr.sum"), contr.helmert, C(x, contr.sum) and
#     relevel(x, ref = "b") in the formula: names, estimates, SEs, logLik, and the emmeans means
# =============================================================================================
# Means of a fit on a grid without emmeans (emmeans 1.8.4 cannot rebuild its grid when the
# formula holds relevel(x, ref = "b"): the string "b" is taken for a variable). L = the rows of
# model.matrix of the fixed part at every N x Variety cell, averaged as emmeans averages (equal
# weights); KR df from pbkrtest::Lb_ddf as emmeans does.
cell_means <- function(m, by_factor) {
  grid <- expand.grid(N = levels(Oats$N), Variety = levels(Oats$Variety))
  grid$yield <- 0
  tt <- delete.response(terms(formula(m, fixed.only = TRUE)))
  X <- model.matrix(tt, model.frame(tt, grid), contrasts.arg = attr(getME(m, "X"), "contrasts"))
  stopifnot(identical(colnames(X), names(fixef(m))))
  levs <- levels(grid[[by_factor]])
  L <- t(vapply(levs, function(l) colMeans(X[grid[[by_factor]] == l, , drop = FALSE]),
                numeric(ncol(X))))
  V <- as.matrix(vcov(m)); Va_kr <- vcovAdj(m); Va <- as.matrix(Va_kr)
  est <- as.numeric(L %*% fixef(m))
  list(level = arr(levs), emmean = arr(est), SE = arr(sqrt(diag(L %*% Va %*% t(L)))),
       SE_unadjusted = arr(sqrt(diag(L %*% V %*% t(L)))),
       df = arr(apply(L, 1, function(l) Lb_ddf(matrix(l, 1), V, Va_kr))), L = mat(L))
}
codings <- list(
  treatment = list(formula = yield ~ N * Variety + (1 | Block/Variety), contrasts = NULL),
  sum_argument = list(formula = yield ~ N * Variety + (1 | Block/Variety),
                      contrasts = quote(list(N = "contr.sum", Variety = "contr.sum"))),
  helmert_argument = list(formula = yield ~ N * Variety + (1 | Block/Variety),
                          contrasts = quote(list(N = "contr.helmert", Variety = "contr.helmert"))),
  sum_in_formula = list(formula = yield ~ C(N, contr.sum) * C(Variety, contr.sum) + (1 | Block/Variety),
                        contrasts = NULL),
  helmert_in_formula = list(formula = yield ~ N * C(Variety, contr.helmert) + (1 | Block/Variety),
                            contrasts = NULL),
  relevel_in_formula = list(formula = yield ~ N * relevel(Variety, ref = "Victory") + (1 | Block/Variety),
                            contrasts = NULL),
  relevel_positional = list(formula = yield ~ relevel(N, "0.4") * Variety + (1 | Block/Variety),
                            contrasts = NULL))
oats_codings <- lapply(codings, function(cd) {
  fb <- if (is.null(cd$contrasts)) fit_best("lmm", cd$formula, "Oats")
        else fit_best("lmm", cd$formula, "Oats", contrasts = cd$contrasts)
  m <- fb$model
  out <- list(formula = deparse1l(cd$formula),
              contrasts = if (is.null(cd$contrasts)) NULL else deparse1l(cd$contrasts),
              fit = fit_entry(fb),
              contrast_matrices = lapply(attr(getME(m, "X"), "contrasts"),
                                         function(cm) if (is.character(cm)) cm else mat(cm)),
              anova_type3_satterthwaite = tab(anova(m)),
              means_N = cell_means(m, "N"), means_Variety = cell_means(m, "Variety"))
  emm <- catching(tryCatch(emmeans(m, ~ N), error = function(e) e))
  out$emmeans_N <- if (inherits(emm$value, "error")) list(error = conditionMessage(emm$value))
                   else c(emm_table(emm$value), list(warnings = emm$warnings))
  out[!vapply(out, is.null, TRUE)]
})
# emmeans needs params = "contr.sum" to rebuild the grid of C(N, contr.sum) (it takes contr.sum
# for a variable); with it the means agree.
m_sum_in_formula <- fit_best("lmm", codings$sum_in_formula$formula, "Oats")$model
emm_c <- catching(emmeans(m_sum_in_formula, ~ N, params = "contr.sum"))
oats_codings$sum_in_formula$emmeans_N_params <- c(emm_table(emm_c$value), list(warnings = emm_c$warnings))
ref_means <- oats_codings$treatment$means_N$emmean
invariance <- lapply(oats_codings, function(o) list(
  llf_minus_treatment = o$fit$llf - oats_codings$treatment$fit$llf,
  max_abs_means_N_minus_treatment = max(abs(o$means_N$emmean - ref_means)),
  max_abs_means_Variety_minus_treatment =
    max(abs(o$means_Variety$emmean - oats_codings$treatment$means_Variety$emmean)),
  max_abs_SE_N_minus_treatment = max(abs(o$means_N$SE - oats_codings$treatment$means_N$SE))))
# Why the REML logLik changes with the coding: X_coding = X_treatment A, and lme4's REML
# criterion holds log|R_X|^2 = log det(X' V^-1 X) (up to the scale), which moves by 2 log|det A|.
# half_log_det_XtX = 0.5 log det(X'X) of each coding's X; its difference to the treatment
# coding's is log|det A|, and llf_minus_treatment = -(that difference).
X_of <- function(cd) {
  fb <- if (is.null(cd$contrasts)) lFormula(cd$formula, Oats)
        else eval(call("lFormula", cd$formula, quote(Oats), contrasts = cd$contrasts))
  fb$X
}
hld <- vapply(codings, function(cd) { X <- X_of(cd)
  as.numeric(determinant(crossprod(X), logarithm = TRUE)$modulus) / 2 }, 0)
for (k in names(invariance)) {
  invariance[[k]]$half_log_det_XtX <- hld[[k]]
  invariance[[k]]$half_log_det_XtX_minus_treatment <- hld[[k]] - hld[["treatment"]]
}

cbpp_codings <- list(
  treatment = list(formula = f_cbpp, contrasts = NULL),
  sum_argument = list(formula = f_cbpp, contrasts = quote(list(period = "contr.sum"))),
  helmert_argument = list(formula = f_cbpp, contrasts = quote(list(period = "contr.helmert"))),
  sum_in_formula = list(formula = cbind(incidence, size - incidence) ~ C(period, contr.sum) + (1 | herd),
                        contrasts = NULL),
  relevel_in_formula = list(formula = cbind(incidence, size - incidence) ~ relevel(period, ref = "2") + (1 | herd),
                            contrasts = NULL))
cbpp_fits <- lapply(cbpp_codings, function(cd) {
  fb <- if (is.null(cd$contrasts)) fit_best("glmm", cd$formula, "cbpp", family = quote(binomial),
                                            candidates = c("bobyqa", "nelder_mead"))
        else fit_best("glmm", cd$formula, "cbpp", family = quote(binomial), contrasts = cd$contrasts,
                      candidates = c("bobyqa", "nelder_mead"))
  m <- fb$model
  X <- getME(m, "X")   # one distinct row per period: those rows are the means' L
  L <- unique(X)
  per <- cbpp$period[!duplicated(as.data.frame(as.matrix(X)))]
  o <- order(per); L <- L[o, , drop = FALSE]
  list(formula = deparse1l(cd$formula),
       contrasts = if (is.null(cd$contrasts)) NULL else deparse1l(cd$contrasts),
       fit = fit_entry(fb),
       means_period_link = list(level = arr(as.character(sort(per))),
                                emmean = arr(as.numeric(L %*% fixef(m))),
                                SE = arr(sqrt(diag(L %*% as.matrix(vcov(m)) %*% t(L))))))
})
x <- common("contrasts_coding", list(oats = "yield ~ <coding of N, Variety> + (1 | Block/Variety)",
                                     cbpp = deparse1l(f_cbpp)))
x$oats <- oats_codings
x$oats_invariance <- invariance
x$cbpp <- lapply(cbpp_fits, function(o) o[!vapply(o, is.null, TRUE)])
x$note <- list(
  oats = paste("For each coding name: fit = lmerTest::lmer(formula, data = Oats, control = ctl",
    "[, contrasts = contrasts]) (REML; fe_names are lme4's coefficient names as R deparses them, e.g.",
    "'C(N, contr.sum)1', 'relevel(Variety, ref = \"Victory\")Golden Rain'); contrast_matrices =",
    "attr(getME(m, 'X'), 'contrasts') (the contrast matrix per factor, or its name);",
    "anova_type3_satterthwaite = anova(m) (lmerTest's type III: the same for every coding);",
    "means_N / means_Variety = equal-weight averages over the N x Variety grid of the fixed-effects",
    "rows (model.matrix of the fixed part at each cell): emmean = L b, SE = sqrt(diag(L vcovAdj(m) L'))",
    "(the Kenward-Roger covariance emmeans uses), SE_unadjusted with vcov(m), df = pbkrtest::Lb_ddf",
    "(what emmeans reports); L the averaging rows; emmeans_N = emmeans(m, ~ N) or the error",
    "emmeans 1.8.4 raises (for C(x, contr.sum) and relevel(x, ref = 'b') in the formula it cannot",
    "rebuild the grid: it takes contr.sum and \"Victory\" for variables); sum_in_formula$emmeans_N_params",
    "= emmeans(m, ~ N, params = 'contr.sum') which works (with model.frame warnings)."),
  oats_invariance = paste("per coding: llf and the means/SEs minus the treatment coding's. The",
    "means, SEs, theta and sigma are invariant to the coding (differences: optimiser noise). The REML",
    "logLik is NOT: lme4's REML criterion contains log det(X' V^-1 X), which moves by 2 log|det A|",
    "when X becomes X A; half_log_det_XtX = 0.5 * log det(crossprod(lFormula(formula, Oats",
    "[, contrasts])$X)), and llf_minus_treatment = -half_log_det_XtX_minus_treatment (to ~1e-9).",
    "ML logLiks (cbpp) are invariant."),
  cbpp = paste("For each coding: fit = glmer(formula, data = cbpp, family = binomial, control = ctl",
    "[, contrasts = contrasts]) (best of the two tight glmer controls); means_period_link = the",
    "link-scale mean of each period (L = the fixed-effects row of each period), SE from vcov(m)",
    "(emmeans' values for this one-factor model)."))
write_ref(x, "contrasts_coding.json")

# =============================================================================================
# 2. update(): the formulas R makes, and the logLik of each updated fit
# =============================================================================================
fb_ss <- fit_best("lmm", Reaction ~ Days + (Days | Subject), "sleepstudy")
m_ss <- fb_ss$model
fb_pen1 <- fit_best("lmm", diameter ~ 1 + (1 | plate), "Penicillin")
m_pen1 <- fb_pen1$model
is_formula_arg <- function(cl) length(cl) >= 3 && is.call(cl[[3]]) && identical(cl[[3]][[1]], as.name("~"))
upd <- function(m, spec, label, ...) {
  # spec: the update as text; the updated model is refitted with the original's control (as
  # update() does), and once more to the optimum (llf_best)
  cl <- parse(text = sprintf("update(m, %s)", spec))[[1]]
  r <- catching(eval(cl))
  u <- r$value
  fu <- formula(u)
  best <- fit_best("lmm", fu, deparse(getCall(m)$data), REML = isREML(u),
                   candidates = c("bobyqa", "nelder_mead"))
  list(call = sprintf("update(%s, %s)", label, spec),
       formula = deparse1l(fu), formula_string = paste(deparse(fu, width.cutoff = 500L), collapse = ""),
       update_formula = if (is_formula_arg(cl)) deparse1l(update.formula(formula(m), eval(cl[[3]])))
                        else NULL,
       fixed_terms = arr(attr(terms(formula(u, fixed.only = TRUE)), "term.labels")),
       random_terms = arr(vapply(findbars(fu), deparse1l, "")),
       REML = isREML(u), llf = as.numeric(logLik(u)), llf_best = best$info$candidates[[best$info$kept]]$llf,
       df_model = attr(logLik(u), "df"), fe_names = arr(names(fixef(u))),
       messages = r$messages, warnings = r$warnings) -> out
  out[!vapply(out, is.null, TRUE)]
}
x <- common("update_formulas", list(sleepstudy = "Reaction ~ Days + (Days | Subject)",
                                    penicillin = "diameter ~ 1 + (1 | plate)",
                                    orthodont = deparse1l(f_orth)))
x$fits <- list(sleepstudy = fit_entry(fb_ss), penicillin = fit_entry(fb_pen1), orthodont = fit_entry(fb_orth))
x$sleepstudy <- list(
  minus_Days = upd(m_ss, ". ~ . - Days", "m"),
  swap_random = upd(m_ss, ". ~ . - (Days | Subject) + (1 | Subject)", "m"),
  uncorrelated = upd(m_ss, ". ~ . - (Days | Subject) + (Days || Subject)", "m"),
  add_quadratic = upd(m_ss, ". ~ . + I(Days^2)", "m"),
  no_intercept = upd(m_ss, ". ~ . - 1", "m"),
  log_response = upd(m_ss, "log(.) ~ .", "m"),
  ml = upd(m_ss, "REML = FALSE", "m"),
  ml_and_formula = upd(m_ss, ". ~ . - Days, REML = FALSE", "m"))
x$penicillin <- list(add_crossed = upd(m_pen1, ". ~ . + (1 | sample)", "m"))
x$orthodont <- list(
  minus_interaction = upd(m_orth, ". ~ . - age:Sex", "m"),
  minus_main_effect = upd(m_orth, ". ~ . - Sex", "m"),
  interaction_to_slope = upd(m_orth, ". ~ . - (age | Subject) + (1 | Subject)", "m"))
x$note <- list(
  fits = paste("m for each data set: lmerTest::lmer(formula, data, control = ctl), REML.", FIT_NOTE),
  sleepstudy = "m = the sleepstudy fit (fits$sleepstudy); each entry as each_entry says",
  penicillin = "m = lmerTest::lmer(diameter ~ 1 + (1 | plate), data = Penicillin, control = ctl); each entry as each_entry says",
  orthodont = "m = the Orthodont REML fit distance ~ age * Sex + (age | Subject); each entry as each_entry says",
  each_entry = paste("u <- eval(call) with call = the entry's `call` (update() refits with m's",
    "control); formula = deparse(formula(u)) (the string R prints; `formula_string` the same without",
    "collapsing whitespace); update_formula = deparse(update.formula(formula(m), <the formula>))",
    "(stats' update.formula: note lme4 expands || when fitting, so formula(u) differs from it there);",
    "fixed_terms = attr(terms(formula(u, fixed.only = TRUE)), 'term.labels'); random_terms =",
    "findbars(formula(u)); llf = logLik(u); llf_best = the best of the two tight controls refitted on",
    "formula(u); df_model = attr(logLik(u), 'df'); messages/warnings = what update() emitted."))
write_ref(x, "update_formulas.json")

# =============================================================================================
# 3. Model selection: AIC(m0, m1, m2), BIC(...), anova(m0, m1, m2) on sleepstudy
# =============================================================================================
fb_s0 <- fit_best("lmm", Reaction ~ 1 + (1 | Subject), "sleepstudy")
fb_s1 <- fit_best("lmm", Reaction ~ Days + (1 | Subject), "sleepstudy")
fb_s2 <- fb_ss
m0 <- fb_s0$model; m1 <- fb_s1$model; m2 <- fb_s2$model
ml_best <- lapply(list(m0 = fb_s0, m1 = fb_s1, m2 = fb_s2), function(fb)
  fit_best("lmm", formula(fb$model), "sleepstudy", REML = FALSE, candidates = c("bobyqa", "nelder_mead")))
m0_ml <- ml_best$m0$model; m1_ml <- ml_best$m1$model; m2_ml <- ml_best$m2$model
an <- catching(anova(m0, m1, m2))
x <- common("model_selection", list(m0 = "Reaction ~ 1 + (1 | Subject)", m1 = "Reaction ~ Days + (1 | Subject)",
                                    m2 = "Reaction ~ Days + (Days | Subject)"))
x$fits_reml <- list(m0 = fit_entry(fb_s0), m1 = fit_entry(fb_s1), m2 = fit_entry(fb_s2))
x$fits_ml <- lapply(ml_best, fit_entry)
x$AIC_reml <- tab(AIC(m0, m1, m2))
x$BIC_reml <- tab(BIC(m0, m1, m2))
x$AIC_ml <- tab(AIC(m0_ml, m1_ml, m2_ml))
x$BIC_ml <- tab(BIC(m0_ml, m1_ml, m2_ml))
x$anova <- c(tab(an$value), list(heading = arr(attr(an$value, "heading")), messages = an$messages,
                                  text = lines_of(an$value)))
x$anova_two <- tab(suppressMessages(anova(m1, m2)))
x$anova_ml_fits <- tab(anova(m0_ml, m1_ml, m2_ml))
x$anova_refit_minus_best_ml <- as.list(an$value$logLik -
                                       vapply(ml_best, function(fb) as.numeric(logLik(fb$model)), 0))
x$anova_refit_false <- tab(suppressWarnings(anova(m0, m1, m2, refit = FALSE)))
x$note <- list(
  fits_reml = paste("m0, m1, m2 = lmerTest::lmer(formula, data = sleepstudy, control = ctl) (REML).", FIT_NOTE),
  fits_ml = "the same formulas fitted with REML = FALSE to the optimum (m0_ml, m1_ml, m2_ml)",
  AIC_reml = paste("AIC(m0, m1, m2) on the REML fits (columns df, AIC; R uses the REML logLik here,",
                   "without a warning)"),
  BIC_reml = "BIC(m0, m1, m2) on the REML fits",
  AIC_ml = "AIC(m0_ml, m1_ml, m2_ml)",
  BIC_ml = "BIC(m0_ml, m1_ml, m2_ml)",
  anova = paste("anova(m0, m1, m2) on the REML fits: lme4 refits them by ML (its message is in",
    "`messages`); table columns npar, AIC, BIC, logLik, deviance, Chisq, Df, Pr(>Chisq); heading =",
    "attr(, 'heading'); text = capture.output(print(anova(m0, m1, m2)))"),
  anova_two = "anova(m1, m2)",
  anova_ml_fits = "anova(m0_ml, m1_ml, m2_ml) (the ML fits to the optimum: no refit)",
  anova_refit_minus_best_ml = "anova(m0, m1, m2)$logLik - logLik of the best ML fits (how far lme4's ML refit stops short)",
  anova_refit_false = "anova(m0, m1, m2, refit = FALSE) (compares the REML logLiks)")
write_ref(x, "model_selection.json")

# =============================================================================================
# 4. Printed text, exactly as R prints it (capture.output), one array of lines per item
# =============================================================================================
# The fits are the optimum fits above; before printing, `control` is dropped from the stored
# call (print would add a 'Control:' line a user who typed lmer(f, data) never sees) and lme4
# (not lmerTest) classes are used where the user meets lme4's print.
as_printed <- function(m, lme4_class = TRUE) {
  if (lme4_class && inherits(m, "lmerModLmerTest")) m <- as(m, "lmerMod")
  cl <- m@call; cl$control <- NULL; cl[[1]] <- if (isGLMM(m)) quote(glmer) else quote(lmer); m@call <- cl
  m
}
fb_orth_ml <- fit_best("lmm", f_orth, "Orthodont", REML = FALSE)
m_orth_ml <- fb_orth_ml$model
pr <- list()
pr$print_sleepstudy_reml_slopes <- lines_of(as_printed(m_ss))
pr$print_orthodont_ml <- lines_of(as_printed(m_orth_ml))
pr$print_cbpp_glmer <- lines_of(as_printed(m_cbpp))
pr$print_oats_reml <- lines_of(as_printed(m_oats))
pr$summary_sleepstudy_lmertest <- I(capture.output(print(summary(as_printed(m_ss, lme4_class = FALSE)))))
pr$summary_sleepstudy_lme4 <- I(capture.output(print(summary(as_printed(m_ss)))))
pr$summary_cbpp_glmer <- I(capture.output(print(summary(as_printed(m_cbpp)))))
pr$anova_oats_type3_satterthwaite <- lines_of(anova(m_oats))
pr$anova_oats_type3_kenward_roger <- lines_of(anova(m_oats, ddf = "Kenward-Roger"))
pr$anova_oats_type1_satterthwaite <- lines_of(anova(m_oats, type = 1))
pr$anova_sleepstudy_type3_satterthwaite <- lines_of(anova(m_ss))
pr$drop1_oats <- lines_of(drop1(m_oats))
pr$drop1_sleepstudy <- lines_of(drop1(m_ss))
pr$drop1_cbpp_chisq <- lines_of(drop1(m_cbpp, test = "Chisq"))
pr$ranova_oats <- lines_of(ranova(m_oats))
pr$ranova_sleepstudy <- lines_of(ranova(m_ss))
pr$emmeans_oats_N_by_Variety <- lines_of(emmeans(m_oats, ~ N | Variety))
pr$pairs_oats_N_by_Variety <- lines_of(pairs(emmeans(m_oats, ~ N | Variety)))
pr$emmeans_oats_pairwise_N_by_Variety <- lines_of(emmeans(m_oats, pairwise ~ N | Variety))
pr$emmeans_oats_N <- I(capture.output(print(suppressMessages(emmeans(m_oats, ~ N)))))
pr$emmeans_oats_N_message <- I(capture.output(invisible(emmeans(m_oats, ~ N)), type = "message"))
pr$emmeans_cbpp_response <- lines_of(emmeans(m_cbpp, ~ period, type = "response"))
pr$pairs_cbpp_response <- lines_of(pairs(emmeans(m_cbpp, ~ period), type = "response"))
pr$joint_tests_oats <- lines_of(joint_tests(m_oats))
pr$joint_tests_cbpp <- lines_of(joint_tests(m_cbpp))
pr$anova_sleepstudy_m1_m2 <- lines_of(suppressMessages(anova(m1, m2)))
pr$anova_sleepstudy_m0_m1_m2 <- lines_of(suppressMessages(anova(m0, m1, m2)))
pr$AIC_sleepstudy_m0_m1_m2 <- lines_of(AIC(m0, m1, m2))
pr$BIC_sleepstudy_m0_m1_m2 <- lines_of(BIC(m0, m1, m2))
pr$r2_nakagawa_sleepstudy <- lines_of(r2_nakagawa(m_ss))
pr$icc_sleepstudy <- lines_of(icc(m_ss))
pr$r2_nakagawa_cbpp <- lines_of(r2_nakagawa(m_cbpp))
pr$icc_cbpp <- lines_of(icc(m_cbpp))
pr$car_Anova_cbpp_type2 <- lines_of(car::Anova(m_cbpp))
pr$car_Anova_cbpp_type3 <- lines_of(car::Anova(m_cbpp, type = 3))
pr$VarCorr_sleepstudy <- lines_of(VarCorr(m_ss))
pr$fixef_sleepstudy <- lines_of(fixef(m_ss))
pr$confint_wald_sleepstudy <- lines_of(confint(m_ss, method = "Wald"))
# PBmodcomp: small and seeded; its time stamp is set to 0 so the text does not change run to run.
set.seed(20240611)
pb <- suppressMessages(suppressWarnings(PBmodcomp(as(m2_ml, "lmerMod"), as(m1_ml, "lmerMod"),
                                                   nsim = 50, seed = 20240611)))
pb$ctime <- 0; attr(pb$ref, "ctime") <- 0
pr$PBmodcomp_sleepstudy <- lines_of(pb)
pr$PBmodcomp_sleepstudy_summary <- lines_of(summary(pb))
pr$KRmodcomp_sleepstudy <- lines_of(KRmodcomp(as(m2, "lmerMod"), as(update(m2, . ~ . - Days), "lmerMod")))
pr$options <- list(width = getOption("width"), digits = getOption("digits"),
                   OutDec = getOption("OutDec"), encoding = l10n_info()$`UTF-8`)
x <- common("printed_text", list(sleepstudy = "Reaction ~ Days + (Days | Subject)",
                                 orthodont_ml = deparse1l(f_orth), cbpp = deparse1l(f_cbpp),
                                 oats = deparse1l(f_oats), m0 = "Reaction ~ 1 + (1 | Subject)",
                                 m1 = "Reaction ~ Days + (1 | Subject)"))
x$text <- pr
x$note <- list(
  fits = paste("m_ss = sleepstudy Reaction ~ Days + (Days | Subject) (REML); m_orth_ml = Orthodont",
    "distance ~ age * Sex + (age | Subject) with REML = FALSE; m_cbpp = the cbpp glmer; m_oats = the",
    "Oats split-plot (yield ~ N * Variety + (1 | Block/Variety), REML); m0, m1, m2 = the sleepstudy",
    "sequence of model_selection.json; m1_ml, m2_ml their ML fits. All fitted to the optimum.",
    FIT_NOTE, "Printing: as_printed(m) drops `control` from the stored call and (for print/summary",
    "of lme4) turns an lmerModLmerTest into lmerMod, so the header reads 'Linear mixed model fit by REML",
    "['lmerMod']' and no 'Control:' line appears, as for a user's lmer(f, data = sleepstudy)."),
  text = paste("Each entry is capture.output(print(<expr>)) at options(width = 80, digits = 7)",
    "(options gives them), UTF-8 (the significance legend has curly quotes):",
    "print_sleepstudy_reml_slopes: print(m_ss); print_orthodont_ml: print(m_orth_ml);",
    "print_cbpp_glmer: print(m_cbpp); print_oats_reml: print(m_oats); summary_sleepstudy_lmertest:",
    "summary(m_ss) with lmerTest (Satterthwaite df and p); summary_sleepstudy_lme4: lme4's summary;",
    "summary_cbpp_glmer: summary(m_cbpp); anova_oats_type3_satterthwaite: anova(m_oats);",
    "anova_oats_type3_kenward_roger: anova(m_oats, ddf = 'Kenward-Roger'); anova_oats_type1_satterthwaite:",
    "anova(m_oats, type = 1); anova_sleepstudy_type3_satterthwaite: anova(m_ss); drop1_oats: drop1(m_oats)",
    "(lmerTest, F tests); drop1_sleepstudy: drop1(m_ss); drop1_cbpp_chisq: drop1(m_cbpp, test = 'Chisq');",
    "ranova_oats: ranova(m_oats); ranova_sleepstudy: ranova(m_ss); emmeans_oats_N_by_Variety:",
    "emmeans(m_oats, ~ N | Variety); pairs_oats_N_by_Variety: pairs(of it); emmeans_oats_pairwise_N_by_Variety:",
    "emmeans(m_oats, pairwise ~ N | Variety); emmeans_oats_N: emmeans(m_oats, ~ N) and",
    "emmeans_oats_N_message: the NOTE it emits as a message (stderr) when made; emmeans_cbpp_response:",
    "emmeans(m_cbpp, ~ period, type = 'response'); pairs_cbpp_response: pairs(emmeans(m_cbpp, ~ period),",
    "type = 'response'); joint_tests_oats / joint_tests_cbpp: joint_tests(m); anova_sleepstudy_m1_m2:",
    "anova(m1, m2) (REML fits, refitted by ML); anova_sleepstudy_m0_m1_m2: anova(m0, m1, m2);",
    "AIC_/BIC_sleepstudy_m0_m1_m2: AIC(m0, m1, m2), BIC(m0, m1, m2) (REML fits);",
    "r2_nakagawa_sleepstudy / icc_sleepstudy: performance's r2_nakagawa(m_ss), icc(m_ss); the same for",
    "cbpp; car_Anova_cbpp_type2: car::Anova(m_cbpp); car_Anova_cbpp_type3: car::Anova(m_cbpp, type = 3);",
    "VarCorr_sleepstudy: VarCorr(m_ss); fixef_sleepstudy: fixef(m_ss); confint_wald_sleepstudy:",
    "confint(m_ss, method = 'Wald'); PBmodcomp_sleepstudy: pbkrtest::PBmodcomp(m2_ml, m1_ml, nsim = 50,",
    "seed = 20240611) with $ctime and attr($ref, 'ctime') set to 0 before printing (only the layout is a reference: 50",
    "simulations); PBmodcomp_sleepstudy_summary: summary(of it); KRmodcomp_sleepstudy:",
    "KRmodcomp(m2, update(m2, . ~ . - Days))."))
write_ref(x, "printed_text.json")

# =============================================================================================
# 5. LMM residuals (does lme4 divide Pearson residuals by sigma?) and partial re.form predictions
# =============================================================================================
head30 <- function(v) arr(unname(head(v, 30)))
sleepstudy$w <- rep(c(1, 2, 0.5), length.out = nrow(sleepstudy))
fb_ssw <- fit_best("lmm", Reaction ~ Days + (1 | Subject), "sleepstudy", weights = quote(w))
m_ssw <- fb_ssw$model
f_pen <- diameter ~ 1 + (1 | plate) + (1 | sample)
fb_pen <- fit_best("lmm", f_pen, "Penicillin")
m_pen <- fb_pen$model
fb_ss_unc <- fit_best("lmm", Reaction ~ Days + (Days || Subject), "sleepstudy")
m_ss_unc <- fb_ss_unc$model
nd_pen <- expand.grid(plate = c("a", "m", "zz"), sample = c("A", "F", "ZZ"), stringsAsFactors = FALSE)
nd_ss <- expand.grid(Subject = c("308", "335", "999"), Days = c(0, 4.5, 12), stringsAsFactors = FALSE)
pred <- function(m, nd, re_form) {
  r <- tryCatch(list(value = arr(unname(predict(m, newdata = nd, re.form = re_form,
                                                allow.new.levels = TRUE)))),
                error = function(e) list(error = conditionMessage(e)))
  r
}
ranef_list <- function(m) lapply(ranef(m), function(r) c(list(level = arr(rownames(r))),
                                                       lapply(as.list(r), arr)))
x <- common("lmm_residuals_predict", list(sleepstudy = "Reaction ~ Days + (Days | Subject)",
                                          sleepstudy_weighted = "Reaction ~ Days + (1 | Subject)",
                                          penicillin = deparse1l(f_pen),
                                          sleepstudy_uncorrelated = "Reaction ~ Days + (Days || Subject)"))
x$fits <- list(sleepstudy = fit_entry(fb_ss), sleepstudy_weighted = fit_entry(fb_ssw),
               penicillin = fit_entry(fb_pen), sleepstudy_uncorrelated = fit_entry(fb_ss_unc))
x$residuals_sleepstudy <- list(
  response = head30(residuals(m_ss, type = "response")),
  pearson = head30(residuals(m_ss, type = "pearson")),
  pearson_scaled = head30(residuals(m_ss, type = "pearson", scaled = TRUE)),
  deviance = head30(residuals(m_ss, type = "deviance")),
  default = head30(residuals(m_ss)),
  sigma = sigma(m_ss),
  max_abs_pearson_minus_response = max(abs(residuals(m_ss, type = "pearson") - residuals(m_ss, type = "response"))),
  fitted = head30(fitted(m_ss)))
x$residuals_sleepstudy_weighted <- list(
  weights = head30(sleepstudy$w),
  response = head30(residuals(m_ssw, type = "response")),
  pearson = head30(residuals(m_ssw, type = "pearson")),
  pearson_scaled = head30(residuals(m_ssw, type = "pearson", scaled = TRUE)),
  sigma = sigma(m_ssw),
  max_abs_pearson_minus_sqrtw_response = max(abs(residuals(m_ssw, type = "pearson") -
                                                 sqrt(sleepstudy$w) * residuals(m_ssw, type = "response"))))
x$predict_penicillin <- list(
  newdata = tab(nd_pen),
  ranef = ranef_list(m_pen),
  all = pred(m_pen, nd_pen, NULL),
  plate_only = pred(m_pen, nd_pen, ~ (1 | plate)),
  sample_only = pred(m_pen, nd_pen, ~ (1 | sample)),
  population = pred(m_pen, nd_pen, NA),
  fitted_plate_only_head = head30(predict(m_pen, re.form = ~ (1 | plate))))
x$predict_sleepstudy_uncorrelated <- list(
  newdata = tab(nd_ss),
  ranef = ranef_list(m_ss_unc),
  all = pred(m_ss_unc, nd_ss, NULL),
  intercept_only = pred(m_ss_unc, nd_ss, ~ (1 | Subject)),
  slope_only = pred(m_ss_unc, nd_ss, ~ (0 + Days | Subject)),
  population = pred(m_ss_unc, nd_ss, NA))
x$predict_sleepstudy_correlated <- list(
  newdata = tab(nd_ss),
  ranef = ranef_list(m_ss),
  all = pred(m_ss, nd_ss, NULL),
  intercept_of_slope_term = pred(m_ss, nd_ss, ~ (1 | Subject)),
  slope_of_slope_term = pred(m_ss, nd_ss, ~ (0 + Days | Subject)),
  same_term = pred(m_ss, nd_ss, ~ (Days | Subject)),
  population = pred(m_ss, nd_ss, NA))
PREDICT_NOTE <- paste("p = predict(m, newdata = nd, re.form = rf, allow.new.levels = TRUE) with rf: all =",
    "NULL (every term), population = NA, and the partial forms named; {value: [...]} or {error:",
    "message}. newdata = expand.grid(plate = c('a','m','zz'), sample = c('A','F','ZZ')) (zz, ZZ are",
    "new levels; plate varies fastest) and expand.grid(Subject = c('308','335','999'), Days = c(0,",
    "4.5, 12)) (999 new). ranef = ranef(m) (level order as lme4's). fitted_plate_only_head =",
    "head(predict(m, re.form = ~ (1 | plate)), 30) on the fit's rows. On the correlated-slope fit",
    "(Days | Subject), lme4 accepts re.form = ~ (1 | Subject) and keeps only the intercept column of",
    "that term's random effects (and ~ (0 + Days | Subject) only the slope column): see",
    "intercept_of_slope_term, slope_of_slope_term.")
x$note <- list(
  fits = paste("sleepstudy: lmerTest::lmer(Reaction ~ Days + (Days | Subject), data = sleepstudy,",
    "control = ctl) (REML); sleepstudy_weighted: lmerTest::lmer(Reaction ~ Days + (1 | Subject), data",
    "= sleepstudy, weights = w, control = ctl) with w = rep(c(1, 2, 0.5), length.out = 180) (as",
    "lmm_weights.json); penicillin: lmerTest::lmer(diameter ~ 1 + (1 | plate) + (1 | sample), data =",
    "Penicillin, control = ctl); sleepstudy_uncorrelated: lmerTest::lmer(Reaction ~ Days + (Days ||",
    "Subject), ...).", FIT_NOTE),
  residuals_sleepstudy = paste("head(residuals(m, type = t), 30) for t in response, pearson,",
    "deviance; pearson_scaled = residuals(m, type = 'pearson', scaled = TRUE); default = residuals(m);",
    "fitted = head(fitted(m), 30). lme4's Pearson residuals of an LMM are NOT divided by sigma",
    "(lmResp's pearson = wtres = sqrt(w) (y - mu)): max_abs_pearson_minus_response is 0; only",
    "scaled = TRUE divides by sigma(m)."),
  residuals_sleepstudy_weighted = paste("the same on the weighted fit: pearson = sqrt(w) * response",
    "(max_abs_pearson_minus_sqrtw_response), pearson_scaled = that / sigma(m)"),
  predict_penicillin = paste(PREDICT_NOTE, "Penicillin: plate_only = re.form ~ (1 | plate),",
    "sample_only = ~ (1 | sample)."),
  predict_sleepstudy_uncorrelated = paste(PREDICT_NOTE, "(Days || Subject) is two terms (1 | Subject)",
    "and (0 + Days | Subject): intercept_only = ~ (1 | Subject), slope_only = ~ (0 + Days | Subject)."),
  predict_sleepstudy_correlated = paste(PREDICT_NOTE, "(Days | Subject): intercept_of_slope_term =",
    "~ (1 | Subject), slope_of_slope_term = ~ (0 + Days | Subject), same_term = ~ (Days | Subject)."))
write_ref(x, "lmm_residuals_predict.json")

# =============================================================================================
# 6. glmer responses of other types: logical, reversed factor, 3-level factor, character;
#    a proportion without weights
# =============================================================================================
VerbAgg$r2l <- VerbAgg$r2 == 1
VerbAgg$resp2 <- factor(ifelse(VerbAgg$r2 == 1, "Y", "N"))
VerbAgg$resp2_rev <- factor(VerbAgg$resp2, levels = c("Y", "N"))
VerbAgg$resp2_chr <- as.character(VerbAgg$resp2)
VerbAgg$resp <- factor(VerbAgg$resp, levels = c("no", "perhaps", "yes"))
glmer_resp <- function(f) {
  r <- tryCatch(fit_best("glmm", f, "VerbAgg", family = quote(binomial),
                         candidates = c("bobyqa", "nelder_mead")),
                error = function(e) e)
  if (inherits(r, "error")) return(list(formula = deparse1l(f), error = conditionMessage(r)))
  out <- fit_entry(r); out$formula <- deparse1l(f); out
}
va <- list(
  numeric_01 = glmer_resp(r2 ~ btype + (1 | id)),
  logical = glmer_resp(r2l ~ btype + (1 | id)),
  factor_N_Y = glmer_resp(resp2 ~ btype + (1 | id)),
  factor_Y_N = glmer_resp(resp2_rev ~ btype + (1 | id)),
  factor_three_levels = glmer_resp(resp ~ btype + (1 | id)),
  character = glmer_resp(resp2_chr ~ btype + (1 | id)))
for (k in names(va)) if (is.null(va[[k]]$error)) {
  va[[k]]$llf_minus_numeric_01 <- va[[k]]$llf - va$numeric_01$llf
  va[[k]]$fe_minus_numeric_01 <- arr(va[[k]]$fe_params - va$numeric_01$fe_params)
}
prop <- catching(glmer(incidence / size ~ period + (1 | herd), data = cbpp, family = binomial,
                       control = ctl_glmm_bobyqa))
x <- common("glmm_responses", list(verbagg = "<response> ~ btype + (1 | id)",
                                   cbpp_proportion = "incidence/size ~ period + (1 | herd)"))
x$verbagg <- va
x$cbpp_proportion_without_weights <- list(
  call = "glmer(incidence / size ~ period + (1 | herd), data = cbpp, family = binomial, control = ctl_glmm_bobyqa)",
  warnings = prop$warnings, llf = as.numeric(logLik(prop$value)), fe_params = arr(fixef(prop$value)),
  theta = arr(getME(prop$value, "theta")))
x$note <- list(
  verbagg = paste("glmer(<response> ~ btype + (1 | id), data = VerbAgg, family = binomial, control",
    "= ctl) for the responses: numeric_01 = r2 (0/1 as in the CSV); logical = r2l <- r2 == 1;",
    "factor_N_Y = resp2 <- factor(ifelse(r2 == 1, 'Y', 'N')) (levels N, Y); factor_Y_N =",
    "factor(resp2, levels = c('Y', 'N')) (success = 'not the first level' = N: the signs flip);",
    "factor_three_levels = resp with levels no, perhaps, yes (R's binomial family takes any level",
    "but the first as success, without a warning; r2 is exactly resp != 'no', so this equals",
    "numeric_01); character = as.character(resp2) (R refuses: the error message). Each fit is the",
    "best of the two tight glmer controls; llf_minus_numeric_01 and fe_minus_numeric_01 compare with",
    "the 0/1 fit. Two-level factor and proportion-with-weights fits are also in",
    "/work/shared/reference/product/glmm_proportion_weights.json."),
  cbpp_proportion_without_weights = paste("the call given (a proportion response with no weights:",
    "R warns 'non-integer #successes in a binomial glm!' and fits as one trial per row); warnings =",
    "the warnings R gave; llf = logLik, fe_params = fixef, theta = getME(, 'theta')."))
write_ref(x, "glmm_responses.json")

# =============================================================================================
# 7. Many responses with one design (issue 28): per-response lmer, variancePartition-style
#    variance fractions, fixed-effect tables with Benjamini-Hochberg p
# =============================================================================================
# Simulated here (set.seed), written to many_responses.csv, read back and fitted as read.
# 40 donors x 5 samples = 200 rows; batch (4 levels) assigned at random per sample, so batch is
# crossed with donor; x ~ N(0, 1) per sample. Response j: y_j = 10 + beta_j x + u_donor + v_batch
# + e with its own sds: beta_j = 0.5 for j <= 6, 0 otherwise; sd_batch_j = 0 for j in 19, 20
# (singular fits expected); rows missing at random in y05 (20 rows) and y15 (40 rows).
set.seed(20240611)
n_donor <- 40; per_donor <- 5; n <- n_donor * per_donor; k <- 20
sim <- data.frame(sample = sprintf("S%03d", seq_len(n)),
                  donor = sprintf("D%02d", rep(seq_len(n_donor), each = per_donor)),
                  batch = sprintf("B%d", sample(rep(1:4, length.out = n))),
                  x = round(rnorm(n), 6))
truth <- data.frame(response = sprintf("y%02d", seq_len(k)),
                    beta = ifelse(seq_len(k) <= 6, 0.5, 0),
                    sd_donor = round(seq(0.3, 2, length.out = k), 4),
                    sd_batch = ifelse(seq_len(k) %in% c(19, 20), 0, round(seq(1, 0.2, length.out = k), 4)),
                    sigma = round(seq(1.5, 0.5, length.out = k), 4))
donor_i <- match(sim$donor, unique(sim$donor)); batch_i <- match(sim$batch, sort(unique(sim$batch)))
for (j in seq_len(k)) {
  u <- rnorm(n_donor, 0, truth$sd_donor[j]); v <- rnorm(4, 0, truth$sd_batch[j])
  y <- 10 + truth$beta[j] * sim$x + u[donor_i] + v[batch_i] + rnorm(n, 0, truth$sigma[j])
  sim[[truth$response[j]]] <- round(y, 6)
}
sim$y05[sample(n, 20)] <- NA
sim$y15[sample(n, 40)] <- NA
write.csv(sim, file.path(out_dir, "many_responses.csv"), row.names = FALSE, na = "")
mr <- read.csv(file.path(out_dir, "many_responses.csv"))
mr$donor <- factor(mr$donor); mr$batch <- factor(mr$batch)
stopifnot(isTRUE(all.equal(mr$x, sim$x, tolerance = 0)), sum(is.na(mr$y15)) == 40)

# variancePartition's calcVarPart for an lmerMod (getVarianceComponents, variancePartition
# 1.3x): each random term's variance per column (attr(VarCorr, 'stddev')^2), terms sorted by
# name; for each non-intercept fixed-effect column j, var_j = population variance (1/N) of
# X[, j] * beta_j, rescaled so the columns' sum equals the population variance of their total
# (the fixed part's variance with the covariances spread in proportion); the residual sigma^2;
# fractions = each / their sum. Computed here from lme4's output (variancePartition is not on
# this machine); written from its documented definition.
var_fractions <- function(m) {
  vc <- lapply(VarCorr(m), function(s) attr(s, "stddev")^2)
  vc <- vc[order(names(vc))]
  comp <- list()
  for (g in names(vc)) for (z in names(vc[[g]]))
    comp[[if (z == "(Intercept)") g else paste(g, z, sep = ".")]] <- unname(vc[[g]][[z]])
  X <- getME(m, "X"); b <- fixef(m); N <- nrow(X)
  idx <- which(colnames(X) != "(Intercept)")
  pvar <- function(v) var(v) * (N - 1) / N
  if (length(idx)) {
    parts <- sapply(idx, function(i) X[, i] * b[[i]])
    if (is.null(dim(parts))) parts <- matrix(parts, ncol = 1)
    fv <- apply(parts, 2, pvar); total <- pvar(rowSums(parts))
    for (i in seq_along(idx)) comp[[colnames(X)[idx[i]]]] <- fv[[i]] / sum(fv) * total
  }
  comp$Residuals <- sigma(m)^2
  v <- unlist(comp)
  list(variances = as.list(v), fractions = as.list(v / sum(v)))
}
responses <- truth$response
per_response <- function(reml) lapply(setNames(nm = responses), function(r) {
  f <- as.formula(sprintf("%s ~ x + (1 | donor) + (1 | batch)", r))
  fb <- fit_best("lmm", f, "mr", REML = reml, candidates = c("bobyqa", "nelder_mead", "default"))
  m <- fb$model
  cf <- summary(m)$coefficients
  vp <- var_fractions(m)
  list(formula = deparse1l(f), n_obs = nobs(m), llf = as.numeric(logLik(m)),
       theta = arr(getME(m, "theta")), sigma = sigma(m), varcorr = varcorr(m),
       singular = isSingular(m), fe_names = arr(rownames(cf)),
       estimate = arr(cf[, "Estimate"]), se = arr(cf[, "Std. Error"]),
       df = if (reml) arr(cf[, "df"]) else NULL, t = arr(cf[, "t value"]),
       p = if (reml) arr(cf[, "Pr(>|t|)"]) else NULL,
       variances = vp$variances, fractions = vp$fractions,
       fit_info = fb$info) -> out
  out[!vapply(out, is.null, TRUE)]
})
fits_reml <- per_response(TRUE)
fits_ml <- per_response(FALSE)
frac_table <- function(fits) {
  comps <- names(fits[[1]]$fractions)
  c(list(response = arr(names(fits))),
    lapply(setNames(nm = comps), function(cn) arr(vapply(fits, function(f) f$fractions[[cn]], 0))))
}
fe_table <- function(fits, term) {
  get <- function(key) vapply(fits, function(f) f[[key]][match(term, f$fe_names)], 0)
  p <- get("p")
  list(response = arr(names(fits)), estimate = arr(get("estimate")), se = arr(get("se")),
       df = arr(get("df")), t = arr(get("t")), p = arr(p), p_bh = arr(p.adjust(p, "BH")))
}
x <- common("many_responses", "y_j ~ x + (1 | donor) + (1 | batch), j = y01..y20")
x$data <- list(file = "many_responses.csv", n = n, n_donor = n_donor, n_batch = 4, k = k,
               missing = list(y05 = sum(is.na(mr$y05)), y15 = sum(is.na(mr$y15))),
               truth = tab(truth))
x$fits_reml <- fits_reml
x$fits_ml <- fits_ml
x$var_fractions_reml <- frac_table(fits_reml)
x$var_fractions_ml <- frac_table(fits_ml)
x$fixed_effects <- list(x = fe_table(fits_reml, "x"), `(Intercept)` = fe_table(fits_reml, "(Intercept)"))
x$default_shortfall <- list(
  reml = arr(vapply(fits_reml, function(f) f$fit_info$default_shortfall, 0)),
  ml = arr(vapply(fits_ml, function(f) f$fit_info$default_shortfall, 0)))
x$note <- list(
  data = paste("many_responses.csv: columns sample, donor, batch, x, y01..y20 (empty = missing);",
    "simulated by this script (section 7) with set.seed(20240611); truth = the simulation's",
    "parameters; read back with read.csv, donor and batch = factor()."),
  fits_reml = paste("per response r: lmerTest::lmer(r ~ x + (1 | donor) + (1 | batch), data = mr,",
    "control = ctl) (REML; rows with r missing dropped by lme4's na.omit: n_obs); estimate/se/df/t/p",
    "= summary(m)$coefficients (Satterthwaite df and p, lmerTest); variances, fractions =",
    "var_fractions(m): variancePartition's calcVarPart for an lmerMod as written in its",
    "getVarianceComponents (random terms' variances sorted by term name, then each non-intercept",
    "fixed-effect column's population variance of X_j beta_j rescaled to sum to the variance of the",
    "whole fixed part, then sigma^2 'Residuals'; fractions = / their sum).", FIT_NOTE),
  fits_ml = paste("the same with REML = FALSE: variancePartition's fitExtractVarPartModel fits by ML by",
    "default (REML = FALSE); no df/p (lmerTest gives Satterthwaite only for REML here)."),
  var_fractions_reml = "per response (rows), fractions$batch, $donor, $x, $Residuals of fits_reml",
  var_fractions_ml = "the same for fits_ml (what fitExtractVarPartModel(..., REML = FALSE) reports)",
  fixed_effects = paste("per fixed effect, across responses: estimate, se, df, t, p of fits_reml and",
    "p_bh = p.adjust(p, 'BH') over the 20 responses"),
  default_shortfall = "per response, logLik(best tight fit) - logLik(lmer with lmerControl() defaults)")
write_ref(x, "many_responses.json")
