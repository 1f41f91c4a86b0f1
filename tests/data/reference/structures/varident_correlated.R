# Correlated residuals with a residual variance per stratum (nlme: correlation = corXXX,
# weights = varIdent(form = ~ 1 | s)), fitted with tight controls.
# Run from this folder: Rscript varident_correlated.R  (writes NAME.csv and NAME.json)
suppressPackageStartupMessages({library(nlme); library(jsonlite)})

ctrl <- lmeControl(msMaxIter = 1000, maxIter = 1000, msTol = 1e-12, tolerance = 1e-10,
                   niterEM = 0, returnObject = TRUE)
gctrl <- glsControl(msMaxIter = 1000, maxIter = 1000, msTol = 1e-12, tolerance = 1e-10,
                    returnObject = TRUE)

roundtrip <- function(d, name, chars) {
  write.csv(d, paste0(name, ".csv"), row.names = FALSE)
  d <- read.csv(paste0(name, ".csv"), colClasses = setNames(rep("character", length(chars)), chars))
  d
}

describe <- function(m, name, call, extra = list()) {
  vs <- m$modelStruct$varStruct
  ratios <- coef(vs, unconstrained = FALSE, allCoef = TRUE)  # sd ratios to the reference
  cs <- m$modelStruct$corStruct
  out <- list(
    name = name, r_call = call, method = m$method, nobs = m$dims$N,
    llf = as.numeric(logLik(m)),
    fe_names = names(coef(m)[if (inherits(m, "lme")) NULL else TRUE]),
    sigma = m$sigma,
    var_ratios_sd = as.list(ratios),
    var_strata = names(ratios),
    correlation = list(type = class(cs)[1],
                       value = coef(cs, unconstrained = FALSE)[[1]],
                       name = names(coef(cs, unconstrained = FALSE))[1]),
    versions = list(R = R.version.string, nlme = as.character(packageVersion("nlme")))
  )
  if (inherits(m, "lme")) {
    out$fe_names <- names(fixef(m))
    out$fe_params <- unname(fixef(m))
    vc <- getVarCov(m)
    out$cov_re <- unclass(vc)
    attr(out$cov_re, "group") <- NULL
    out$sd_re <- sqrt(diag(vc))
    out$bse_fe <- unname(sqrt(diag(vcov(m))))
    out$fitted_head <- unname(fitted(m, level = 1)[1:20])
  } else {
    out$fe_params <- unname(coef(m))
    out$bse_fe <- unname(sqrt(diag(vcov(m))))
    out$fitted_head <- unname(fitted(m)[1:20])
  }
  iv <- tryCatch(intervals(m, which = "var-cov"), error = function(e) NULL)
  if (!is.null(iv)) {
    out$intervals_varcov <- list(
      corStruct = unclass(as.data.frame(iv$corStruct)),
      varStruct = unclass(as.data.frame(iv$varStruct)),
      sigma = unname(iv$sigma))
    if (!is.null(iv$reStruct)) out$intervals_varcov$reStruct <- lapply(iv$reStruct, function(x) unclass(as.data.frame(x)))
  }
  out <- c(out, extra)
  write_json(out, paste0(name, ".json"), auto_unbox = TRUE, digits = NA, pretty = TRUE, na = "null")
  cat(name, out$llf, "\n")
}

# ---- BodyWeight: continuous-time AR(1), random slopes, a variance per Diet (constant within Rat)
bw <- as.data.frame(nlme::BodyWeight)
bw <- data.frame(weight = bw$weight, Time = bw$Time, Rat = as.character(bw$Rat),
                 Diet = as.character(bw$Diet), stringsAsFactors = FALSE)
bw <- roundtrip(bw, "bodyweight_car1_varident", c("Rat", "Diet"))
for (m in c("REML", "ML")) {
  fit <- lme(weight ~ Time * Diet, data = bw, random = ~ Time | Rat,
             correlation = corCAR1(form = ~ Time | Rat), weights = varIdent(form = ~ 1 | Diet),
             method = m, control = ctrl)
  describe(fit, paste0("bodyweight_car1_varident_", tolower(m)),
           sprintf("lme(weight ~ Time * Diet, data = bw, random = ~ Time | Rat, correlation = corCAR1(form = ~ Time | Rat), weights = varIdent(form = ~ 1 | Diet), method = \"%s\", control = lmeControl(msMaxIter = 1000, maxIter = 1000, msTol = 1e-12, tolerance = 1e-10, niterEM = 0))", m))
}

# ---- Orthodont: AR(1) and a random intercept, a variance per Sex (constant within Subject)
orth <- as.data.frame(nlme::Orthodont)
orth <- data.frame(distance = orth$distance, age = orth$age, Subject = as.character(orth$Subject),
                   Sex = as.character(orth$Sex), stringsAsFactors = FALSE)
orth <- roundtrip(orth, "orthodont_varident", c("Subject", "Sex"))
orth$visit <- (orth$age - 6) / 2
for (m in c("REML", "ML")) {
  fit <- lme(distance ~ age * Sex, data = orth, random = ~ 1 | Subject,
             correlation = corAR1(form = ~ visit | Subject), weights = varIdent(form = ~ 1 | Sex),
             method = m, control = ctrl)
  describe(fit, paste0("orthodont_ar1_varident_sex_", tolower(m)),
           sprintf("lme(distance ~ age * Sex, data = orth, random = ~ 1 | Subject, correlation = corAR1(form = ~ visit | Subject), weights = varIdent(form = ~ 1 | Sex), method = \"%s\"), visit = (age - 6) / 2", m))
  # compound symmetry without random effects (with a random intercept it is a ridge)
  fit <- gls(distance ~ age * Sex, data = orth, correlation = corCompSymm(form = ~ 1 | Subject),
             weights = varIdent(form = ~ 1 | Sex), method = m, control = gctrl)
  describe(fit, paste0("orthodont_cs_varident_sex_", tolower(m)),
           sprintf("gls(distance ~ age * Sex, data = orth, correlation = corCompSymm(form = ~ 1 | Subject), weights = varIdent(form = ~ 1 | Sex), method = \"%s\")", m))
  # strata varying within a group: a variance per age (nlme allows it)
  fit <- lme(distance ~ age * Sex, data = orth, random = ~ 1 | Subject,
             correlation = corAR1(form = ~ visit | Subject), weights = varIdent(form = ~ 1 | age),
             method = m, control = ctrl)
  describe(fit, paste0("orthodont_ar1_varident_age_", tolower(m)),
           sprintf("lme(distance ~ age * Sex, data = orth, random = ~ 1 | Subject, correlation = corAR1(form = ~ visit | Subject), weights = varIdent(form = ~ 1 | age), method = \"%s\"), visit = (age - 6) / 2", m))
  fit <- gls(distance ~ age * Sex, data = orth, correlation = corCompSymm(form = ~ 1 | Subject),
             weights = varIdent(form = ~ 1 | age), method = m, control = gctrl)
  describe(fit, paste0("orthodont_cs_varident_age_", tolower(m)),
           sprintf("gls(distance ~ age * Sex, data = orth, correlation = corCompSymm(form = ~ 1 | Subject), weights = varIdent(form = ~ 1 | age), method = \"%s\")", m))
}
