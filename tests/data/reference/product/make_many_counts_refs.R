# R's answers for the many-responses fits of counts (Poisson and negative binomial GLMMs per
# response) and for variance fractions with a random slope (variancePartition's calcVarPart).
#
# Run from the repository root (well under a minute):
#   Rscript tests/data/reference/product/make_many_counts_refs.R
# It simulates two small data sets (set.seed), writes them next to itself (many_counts.csv,
# many_slopes.csv), reads them back, fits what it read and writes many_counts.json and
# many_slopes.json. Two runs give identical count files; lmer's estimates in many_slopes.json move
# by ~1e-8 between runs (bobyqa's optimum; the logLiks do not move).
#
# Every fit is run to the optimum: glmer with tolPwrss = 1e-12 and two optimisers (bobyqa with
# rhoend 1e-12, a tight Nelder-Mead), the higher logLik kept; lmer likewise (bobyqa rhoend 1e-12,
# Nelder-Mead). The negative binomial model is glmmTMB's nbinom2 (the Laplace approximation with
# the exact Hessian in log|M|, theta estimated jointly: the package's model); lme4's glmer.nb,
# whose log-determinant uses the Fisher weights, is recorded beside it. Written for R 4.2.2,
# lme4 1.1-31, glmmTMB 1.1.x (Debian packages).

suppressMessages({
  library(lme4); library(glmmTMB); library(jsonlite)
})
options(warn = 1, stringsAsFactors = FALSE)

out_dir <- "tests/data/reference/product"
if (!dir.exists(out_dir)) stop("run from the repository root")

VERSIONS <- list(R = paste(R.version$major, R.version$minor, sep = "."),
                 lme4 = as.character(packageVersion("lme4")),
                 glmmTMB = as.character(packageVersion("glmmTMB")),
                 TMB = as.character(packageVersion("TMB")),
                 Matrix = as.character(packageVersion("Matrix")),
                 jsonlite = as.character(packageVersion("jsonlite")))
arr <- function(x) I(unname(x))
write_ref <- function(x, name) {
  write_json(x, file.path(out_dir, name), digits = NA, auto_unbox = TRUE, pretty = TRUE, na = "null")
  cat("wrote", name, "\n")
}

ctl_glmm <- list(
  bobyqa = glmerControl(optimizer = "bobyqa", tolPwrss = 1e-12, optCtrl = list(rhoend = 1e-12, maxfun = 1e5)),
  nelder_mead = glmerControl(optimizer = "Nelder_Mead", tolPwrss = 1e-12,
                             optCtrl = list(maxfun = 1e5, FtolAbs = 1e-12, FtolRel = 1e-14, XtolRel = 1e-12)))
ctl_lmm <- list(
  bobyqa = lmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-12, maxfun = 1e5)),
  nelder_mead = lmerControl(optimizer = "Nelder_Mead",
                            optCtrl = list(maxfun = 1e5, FtolAbs = 1e-12, FtolRel = 1e-14, XtolRel = 1e-12)))
CONTROLS <- list(
  glmer = paste("glmerControl(optimizer = 'bobyqa', tolPwrss = 1e-12, optCtrl = list(rhoend = 1e-12,",
                "maxfun = 1e5)) and glmerControl(optimizer = 'Nelder_Mead', tolPwrss = 1e-12, optCtrl =",
                "list(maxfun = 1e5, FtolAbs = 1e-12, FtolRel = 1e-14, XtolRel = 1e-12)); the higher logLik kept"),
  glmer_nb = "glmer.nb(..., control = the same two glmerControl()s); the higher logLik kept",
  glmmTMB = "glmmTMB(..., family = nbinom2) with its defaults (nlminb, gradient-based)",
  lmer = paste("lmerControl(optimizer = 'bobyqa', optCtrl = list(rhoend = 1e-12, maxfun = 1e5)) and",
               "lmerControl(optimizer = 'Nelder_Mead', optCtrl = list(maxfun = 1e5, FtolAbs = 1e-12,",
               "FtolRel = 1e-14, XtolRel = 1e-12)); the higher logLik kept"))

best_of <- function(fits) {
  llf <- vapply(fits, function(m) as.numeric(logLik(m)), 0)
  list(model = fits[[which.max(llf)]], kept = names(fits)[which.max(llf)], llf = as.list(llf))
}

# =============================================================================================
# 1. Counts: 5 responses, 20 donors x 5 samples, Poisson and negative binomial per response
# =============================================================================================
# c_j ~ NB(mu, theta_j), log mu = b0_j + b1_j x + u_donor, u ~ N(0, sd_j^2); c03 has 10 missing
# values; c05 is rarely non-zero (a low rate).
set.seed(20261207)
n_donor <- 20; per_donor <- 5; n <- n_donor * per_donor; k <- 5
sim <- data.frame(sample = sprintf("S%03d", seq_len(n)),
                  donor = sprintf("D%02d", rep(seq_len(n_donor), each = per_donor)),
                  x = round(rnorm(n), 6))
truth <- data.frame(response = sprintf("c%02d", seq_len(k)), b0 = c(1.5, 0.5, 2.0, 1.0, -0.7),
                    b1 = c(0.4, 0, -0.3, 0.2, 0.5), sd_donor = c(0.5, 0.8, 0.3, 0.6, 0.4),
                    theta = c(3, 1.5, 8, 2, 5))
donor_i <- match(sim$donor, unique(sim$donor))
for (j in seq_len(k)) {
  u <- rnorm(n_donor, 0, truth$sd_donor[j])
  mu <- exp(truth$b0[j] + truth$b1[j] * sim$x + u[donor_i])
  sim[[truth$response[j]]] <- rnbinom(n, size = truth$theta[j], mu = mu)
}
sim$c03[sample(n, 10)] <- NA
write.csv(sim, file.path(out_dir, "many_counts.csv"), row.names = FALSE, na = "")
mc <- read.csv(file.path(out_dir, "many_counts.csv"))
mc$donor <- factor(mc$donor)

glmm_entry <- function(m, extra = list()) {
  vc <- as.data.frame(VarCorr(m))
  c(list(n_obs = nobs(m), llf = as.numeric(logLik(m)), fe_names = arr(names(fixef(m))),
         fe_params = arr(fixef(m)), bse_fe = arr(sqrt(diag(as.matrix(vcov(m))))),
         theta = arr(getME(m, "theta")), sd_re = vc$sdcor[1]), extra)
}
poisson_fits <- lapply(setNames(nm = truth$response), function(r) {
  f <- as.formula(sprintf("%s ~ x + (1 | donor)", r))
  b <- best_of(lapply(ctl_glmm, function(ctl) glmer(f, data = mc, family = poisson, control = ctl)))
  glmm_entry(b$model, list(kept = b$kept, candidates = b$llf))
})
nb_fits <- lapply(setNames(nm = truth$response), function(r) {
  f <- as.formula(sprintf("%s ~ x + (1 | donor)", r))
  tmb <- glmmTMB(f, data = mc, family = nbinom2)
  ft <- fixef(tmb)$cond
  nb <- best_of(lapply(ctl_glmm, function(ctl) suppressWarnings(glmer.nb(f, data = mc, control = ctl))))
  list(n_obs = nobs(tmb), llf = as.numeric(logLik(tmb)), fe_names = arr(names(ft)),
       fe_params = arr(ft), bse_fe = arr(sqrt(diag(vcov(tmb)$cond))),
       sd_re = as.numeric(attr(VarCorr(tmb)$cond$donor, "stddev")), theta = sigma(tmb),
       converged = tmb$fit$convergence == 0,
       glmer_nb = list(llf = as.numeric(logLik(nb$model)), fe_params = arr(fixef(nb$model)),
                       theta = getME(nb$model, "glmer.nb.theta"), kept = nb$kept))
})
x <- list(name = "many_counts", formula = "c_j ~ x + (1 | donor), j = c01..c05",
          versions = VERSIONS, controls = CONTROLS,
          data = list(file = "many_counts.csv", n = n, n_donor = n_donor, k = k,
                      missing = list(c03 = sum(is.na(mc$c03))),
                      truth = lapply(truth, function(v) arr(v))),
          poisson = poisson_fits, negative_binomial = nb_fits)
x$note <- list(
  data = paste("many_counts.csv: columns sample, donor, x, c01..c05 (empty = missing); simulated by",
               "this script with set.seed(20261207) (truth = its parameters); read back with read.csv,",
               "donor = factor()."),
  poisson = paste("per response r: glmer(r ~ x + (1 | donor), data = mc, family = poisson, control = ctl)",
                  "for both controls (CONTROLS$glmer), the higher logLik kept (kept; candidates = both",
                  "logLiks); rows with r missing dropped by na.omit (n_obs); bse_fe = sqrt(diag(vcov))",
                  "(lme4's default, from the Hessian); theta = getME(m, 'theta'); sd_re = the donor sd."),
  negative_binomial = paste("per response r: glmmTMB(r ~ x + (1 | donor), data = mc, family = nbinom2):",
                            "llf, fe_params, bse_fe (sqrt(diag(vcov(m)$cond))), sd_re, theta = sigma(m)",
                            "(nbinom2's theta); glmer_nb = lme4's glmer.nb fit of the same model (both",
                            "controls, the higher logLik), whose Laplace approximation differs"))
write_ref(x, "many_counts.json")

# =============================================================================================
# 2. Variance fractions with a random slope (variancePartition's calcVarPart for an lmerMod)
# =============================================================================================
# y_j = 10 + 0.5 x + a_donor + s_donor x + v_batch + e, (a, s) correlated per donor; 30 donors x
# 6 samples, 3 batches crossed with donor; y2 has 12 missing values.
set.seed(20261208)
n_donor <- 30; per_donor <- 6; n <- n_donor * per_donor; k <- 4
sl <- data.frame(sample = sprintf("S%03d", seq_len(n)),
                 donor = sprintf("D%02d", rep(seq_len(n_donor), each = per_donor)),
                 batch = sprintf("B%d", sample(rep(1:3, length.out = n))),
                 x = round(rnorm(n), 6))
truth_s <- data.frame(response = sprintf("y%d", seq_len(k)), sd_a = c(1, 0.5, 1.5, 0.8),
                      sd_s = c(0.6, 1.0, 0.3, 0.7), rho = c(0.3, -0.4, 0, 0.6),
                      sd_batch = c(0.5, 0.8, 0.3, 0.6), sigma = c(1, 0.7, 1.2, 0.9))
donor_i <- match(sl$donor, unique(sl$donor)); batch_i <- match(sl$batch, sort(unique(sl$batch)))
for (j in seq_len(k)) {
  S <- matrix(c(truth_s$sd_a[j]^2, rep(truth_s$rho[j] * truth_s$sd_a[j] * truth_s$sd_s[j], 2),
                truth_s$sd_s[j]^2), 2)
  ab <- matrix(rnorm(2 * n_donor), n_donor) %*% chol(S)
  v <- rnorm(3, 0, truth_s$sd_batch[j])
  y <- 10 + 0.5 * sl$x + ab[donor_i, 1] + ab[donor_i, 2] * sl$x + v[batch_i] + rnorm(n, 0, truth_s$sigma[j])
  sl[[truth_s$response[j]]] <- round(y, 6)
}
sl$y2[sample(n, 12)] <- NA
write.csv(sl, file.path(out_dir, "many_slopes.csv"), row.names = FALSE, na = "")
ms <- read.csv(file.path(out_dir, "many_slopes.csv"))
ms$donor <- factor(ms$donor); ms$batch <- factor(ms$batch)

# variancePartition's calcVarPart for an lmerMod, written from its published definition
# (getVarianceComponents in R/calcVarPart.R, variancePartition >= 1.21; Hoffman & Schadt 2016,
# BMC Bioinformatics 17:483): per random-effects term (terms sorted by name) the variance of each
# of its columns, attr(VarCorr(m)[[g]], "stddev")^2 -- the diagonal of the term's covariance, named
# g for the intercept and g.z for a column z (covariances do not enter); per non-intercept
# fixed-effect column i the population variance of X[, i] beta_i, rescaled so that they sum to
# the population variance of the whole fixed part; sigma^2 as Residuals; fractions = / their sum.
var_fractions <- function(m) {
  vc <- lapply(VarCorr(m), function(s) attr(s, "stddev")^2)
  vc <- vc[order(names(vc))]
  comp <- list()
  for (g in names(vc)) for (z in names(vc[[g]]))
    comp[[if (z == "(Intercept)") g else paste(g, z, sep = ".")]] <- unname(vc[[g]][[z]])
  X <- getME(m, "X"); b <- fixef(m); N <- nrow(X)
  idx <- which(colnames(X) != "(Intercept)")
  pvar <- function(v) var(v) * (N - 1) / N
  parts <- sapply(idx, function(i) X[, i] * b[[i]])
  if (is.null(dim(parts))) parts <- matrix(parts, ncol = 1)
  fv <- apply(parts, 2, pvar); total <- pvar(rowSums(parts))
  for (i in seq_along(idx)) comp[[colnames(X)[idx[i]]]] <- fv[[i]] / sum(fv) * total
  comp$Residuals <- sigma(m)^2
  v <- unlist(comp)
  list(variances = as.list(v), fractions = as.list(v / sum(v)))
}
slope_fits <- lapply(setNames(nm = truth_s$response), function(r) {
  f <- as.formula(sprintf("%s ~ x + (1 + x | donor) + (1 | batch)", r))
  b <- best_of(lapply(ctl_lmm, function(ctl) lmer(f, data = ms, REML = FALSE, control = ctl)))
  m <- b$model
  vc <- as.data.frame(VarCorr(m))
  vp <- var_fractions(m)
  list(n_obs = nobs(m), llf = as.numeric(logLik(m)), theta = arr(getME(m, "theta")),
       sigma = sigma(m), fe_params = arr(fixef(m)),
       varcorr = list(grp = arr(vc$grp), var1 = arr(vc$var1), var2 = arr(vc$var2), vcov = arr(vc$vcov)),
       variances = vp$variances, fractions = vp$fractions, kept = b$kept, candidates = b$llf)
})
x <- list(name = "many_slopes", formula = "y_j ~ x + (1 + x | donor) + (1 | batch), j = y1..y4 (ML)",
          versions = VERSIONS, controls = CONTROLS,
          data = list(file = "many_slopes.csv", n = n, n_donor = n_donor, n_batch = 3, k = k,
                      missing = list(y2 = sum(is.na(ms$y2))),
                      truth = lapply(truth_s, function(v) arr(v))),
          fits_ml = slope_fits)
x$note <- list(
  data = paste("many_slopes.csv: columns sample, donor, batch, x, y1..y4 (empty = missing); simulated",
               "by this script with set.seed(20261208); read back with read.csv, donor and batch = factor()."),
  fits_ml = paste("per response r: lmer(r ~ x + (1 + x | donor) + (1 | batch), data = ms, REML = FALSE)",
                  "with both CONTROLS$lmer, the higher logLik kept; variances, fractions = var_fractions(m),",
                  "variancePartition's calcVarPart for an lmerMod (components batch, donor, donor.x, x,",
                  "Residuals: terms sorted by name, a random slope's variance is its column's variance in",
                  "VarCorr)."))
write_ref(x, "many_slopes.json")
