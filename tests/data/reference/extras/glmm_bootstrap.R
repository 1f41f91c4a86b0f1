# Parametric bootstrap of a glmer fit, for tests/simulation/test_glmm_simulation.py (R 4.2, lme4 1.1-31).
# Run: Rscript glmm_bootstrap.R  (from this directory; writes glmm_bootstrap.json)
# bootMer draws new herd effects and binomial responses (simulate, use.u = FALSE) and refits;
# the test compares the median and quartiles of every parameter's replicates with ours (robust
# to the rare replicates with no case in a period, whose estimate runs off to about -20).
suppressMessages({library(lme4); library(jsonlite)})
data_dir <- "../../../../mixedlm_sklearn/datasets/data"
cbpp <- read.csv(file.path(data_dir, "cbpp.csv"), colClasses = c(herd = "factor", period = "factor"))
f <- cbind(incidence, size - incidence) ~ period + (1 | herd)
fit <- glmer(f, cbpp, family = binomial)
stat <- function(m) c(sqrt(VarCorr(m)$herd[1]), fixef(m))
nsim <- 1000
started <- Sys.time()
b <- bootMer(fit, stat, nsim = nsim, seed = 20261202, type = "parametric")
seconds <- as.numeric(difftime(Sys.time(), started, units = "secs"))
t <- b$t[stats::complete.cases(b$t), , drop = FALSE]
names <- c("sd_(Intercept)|herd", names(fixef(fit)))
ci <- t(apply(t, 2, quantile, probs = c(0.025, 0.975), type = 7))
quartiles <- t(apply(t, 2, quantile, probs = c(0.25, 0.5, 0.75), type = 7))
res <- list(formula = deparse(f), nsim = nsim, n_ok = nrow(t), seconds = seconds, seed = 20261202,
            names = names, estimate = unname(stat(fit)),
            boot_mean = unname(colMeans(t)), boot_sd = unname(apply(t, 2, sd)),
            perc_lower = unname(ci[, 1]), perc_upper = unname(ci[, 2]),
            q25 = unname(quartiles[, 1]), median = unname(quartiles[, 2]), q75 = unname(quartiles[, 3]),
            n_below_minus_5 = unname(colSums(t < -5)))
writeLines(toJSON(res, digits = NA, auto_unbox = TRUE, pretty = TRUE), "glmm_bootstrap.json")
