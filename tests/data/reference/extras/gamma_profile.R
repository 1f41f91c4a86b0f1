# Profile confidence intervals of the Gamma GLMM reference (structures/gamma_log_sim) by
# glmmTMB, written to gamma_profile.json for tests/glmm/test_glmm_families.py.
# Run from the repository root: Rscript tests/data/reference/extras/gamma_profile.R
suppressMessages(library(glmmTMB))
library(jsonlite)
d <- read.csv("tests/data/reference/structures/gamma_log_sim.csv", colClasses = c(g = "character"))
m <- glmmTMB(y ~ x + (1 | g), family = Gamma(link = "log"), data = d)
ci <- confint(m, method = "profile", estimate = FALSE)
out <- list(
  r_call = "confint(glmmTMB(y ~ x + (1 | g), family = Gamma(link = 'log'), data = d), method = 'profile')",
  versions = list(R = R.version.string, glmmTMB = as.character(packageVersion("glmmTMB"))),
  logLik = as.numeric(logLik(m)),
  names = rownames(ci),
  lower = unname(ci[, 1]), upper = unname(ci[, 2]),
  note = "theta_1|g.1 is log(sd) of the random intercept; glmmTMB interpolates its profile with a spline, so its endpoints are approximate (the tests decide by a brute-force profile)"
)
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE), "tests/data/reference/extras/gamma_profile.json")
