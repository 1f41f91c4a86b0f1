# References for tests/estimator/test_per_term_cov.py: per-term covariance types in one model
# (R 4.2, lme4 1.1-31). Run: Rscript per_term_cov.R  (from this directory; writes
# per_term_cov.json). Dietox (bundled): Pig is nested in Litter; Time is uncentred (1..12).
suppressMessages({library(lme4); library(jsonlite)})
data_dir <- "../../../../mixedlm_sklearn/datasets/data"
dietox <- read.csv(file.path(data_dir, "dietox.csv"), colClasses = c(Pig = "factor", Litter = "factor"))
out <- function(fit, formula) {
  vc <- VarCorr(fit)
  msgs <- fit@optinfo$conv$lme4$messages
  list(formula = formula, data = "dietox", reml = isREML(fit),
       fe_names = names(fixef(fit)), fe_params = unname(fixef(fit)),
       bse_fe = unname(sqrt(diag(as.matrix(vcov(fit))))),
       # lme4 names the split (Time || Litter) "Litter" (Time) and "Litter.1" (intercept)
       terms = lapply(names(vc), function(g) list(group = g, z_names = colnames(vc[[g]]),
                                                   cov_re = unname(as.matrix(vc[[g]])))),
       scale = sigma(fit)^2, llf = as.numeric(logLik(fit)), singular = isSingular(fit),
       lme4_messages = if (is.null(msgs)) list() else as.list(msgs))
}
f <- Weight ~ Time + (Time || Litter) + (Time | Pig)
res <- list(
  dietox_reml = out(lmer(f, dietox, REML = TRUE), deparse(f)),
  # lme4 warns "failed to converge with max|grad| = 0.0038" here (kept in lme4_messages)
  dietox_ml = out(lmer(f, dietox, REML = FALSE), deparse(f)))
write_json(res, "per_term_cov.json", digits = NA, auto_unbox = TRUE, pretty = TRUE)
