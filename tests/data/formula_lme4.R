# lme4 reference fits for the R idioms of the formula interface (tests/formulas/test_formula_semantics.py).
#
# Run from the repository root:  Rscript tests/data/formula_lme4.R
# Writes tests/data/formula_lme4.json. Produced with R 4.2, lme4 1.1-31 (Debian packages).
#
# (Vectors are wrapped in I() so that jsonlite writes length-1 vectors as arrays.)
# The data are the package's bundled CSV files, so R and Python fit the same numbers.
# Each case stores the formula (used verbatim by lmer and by mixedlm_sklearn.lmer), the
# log-likelihood (REML criterion on logLik's scale for REML fits), the fixed effects with
# lme4's column names, the random-effects covariance of each grouping factor, the residual
# variance, the fitted values (fitted(); with an offset they include it) and predictions
# for a few new rows (predict(fit, newdata); transforms use the fitted data's state).

suppressPackageStartupMessages({
  library(lme4)
  library(splines)
  library(jsonlite)
})

csv <- function(name, chr) {
  read.csv(file.path("mixedlm_sklearn", "datasets", "data", name),
           colClasses = setNames(rep("character", length(chr)), chr))
}

sleep <- csv("sleepstudy.csv", "Subject")
sleep$off <- (sleep$Days - 4.5)^2 / 2          # a plain column used as an offset
sleep$Days.x <- sleep$Days                     # an R-style dotted column name
sleep_new <- data.frame(Subject = c("308", "309", "330", "372"),
                        Days = c(0.5, 4, 9, 6.25))
sleep_new$off <- (sleep_new$Days - 4.5)^2 / 2
sleep_new$Days.x <- sleep_new$Days
sleep_new_int <- data.frame(Subject = c("308", "309", "330", "372"), Days = c(1, 4, 9, 6))

dietox <- csv("dietox.csv", c("Pig", "Evit", "Cu", "Litter"))
dietox_new <- data.frame(Pig = c("4601", "4643", "5389", "5581"),
                         Evit = c("Evit000", "Evit100", "Evit200", "Evit100"),
                         Time = c(1.5, 6, 12, 9), Feed = c(10, 25.5, 60, 40))

orthodont <- csv("orthodont.csv", c("Subject", "Sex"))
orthodont_new <- data.frame(Subject = c("M01", "F03", "M11"), Sex = c("Male", "Female", "Male"),
                            age = c(9, 11.5, 14))

cases <- list(
  list("sleep_quadratic", "Reaction ~ Days + I(Days^2) + (1 | Subject)", "sleepstudy", TRUE),
  list("sleep_quadratic_slopes_ml", "Reaction ~ Days + I(Days^2) + (Days | Subject)",
       "sleepstudy", FALSE),
  list("sleep_quadratic_random", "Reaction ~ Days + (0 + I(Days^2) | Subject)", "sleepstudy",
       TRUE),
  # ^ binds tighter than * and +, and associates to the right: Days^(2^0.5)
  list("sleep_power_precedence", "Reaction ~ Days + I(0.5 * Days^2 + 1) + (1 | Subject)",
       "sleepstudy", TRUE),
  list("sleep_power_right", "Reaction ~ Days + I(Days^2^0.5) + (1 | Subject)", "sleepstudy",
       TRUE),
  list("sleep_logical", "Reaction ~ Days + I(Days > 4) + (1 | Subject)", "sleepstudy", TRUE),
  list("sleep_remainder", "Reaction ~ Days + I(Days %% 2) + (1 | Subject)", "sleepstudy", TRUE),
  list("sleep_factor", "Reaction ~ factor(Days) + (1 | Subject)", "sleepstudy", TRUE),
  list("sleep_log", "log(Reaction) ~ log(Days + 1) + (1 | Subject)", "sleepstudy", TRUE),
  list("sleep_elementwise", "Reaction ~ sqrt(Days) + exp(Days/5) + abs(Days - 4.5) + (1 | Subject)",
       "sleepstudy", TRUE),
  list("sleep_scale", "Reaction ~ scale(Days) + (scale(Days) | Subject)", "sleepstudy", TRUE),
  list("sleep_scale_uncentred", "Reaction ~ scale(Days, center = FALSE) + (1 | Subject)",
       "sleepstudy", TRUE),
  list("sleep_centre", "Reaction ~ scale(Days, scale = FALSE) + (1 | Subject)", "sleepstudy",
       TRUE),
  list("sleep_poly", "Reaction ~ poly(Days, 2) + (Days | Subject)", "sleepstudy", TRUE),
  list("sleep_poly_only", "Reaction ~ poly(Days, 2) + (1 | Subject)", "sleepstudy", TRUE),
  list("sleep_poly_raw", "Reaction ~ poly(Days, 2, raw = TRUE) + (1 | Subject)", "sleepstudy",
       TRUE),
  list("sleep_bs", "Reaction ~ bs(Days, df = 3) + (1 | Subject)", "sleepstudy", TRUE),
  list("sleep_bs_knots", "Reaction ~ bs(Days, knots = c(3, 6), degree = 2) + (1 | Subject)",
       "sleepstudy", TRUE),
  list("sleep_no_intercept_zero", "Reaction ~ 0 + Days + (Days | Subject)", "sleepstudy", TRUE),
  list("sleep_no_intercept_minus", "Reaction ~ Days - 1 + (Days | Subject)", "sleepstudy", TRUE),
  list("sleep_offset_expression", "Reaction ~ Days + offset(0.5 * Days) + (Days | Subject)",
       "sleepstudy", TRUE),
  list("sleep_offset_column", "Reaction ~ Days + offset(off) + (1 | Subject)", "sleepstudy",
       TRUE),
  list("sleep_two_offsets", "Reaction ~ Days + offset(off) + offset(2 * Days) + (1 | Subject)",
       "sleepstudy", FALSE),
  list("sleep_dotted_name", "Reaction ~ Days.x + (Days.x | Subject)", "sleepstudy", TRUE),
  list("dietox_product", "Weight ~ Time * Feed + (1 | Pig)", "dietox", TRUE),
  list("dietox_colon", "Weight ~ Time:Feed + (1 | Pig)", "dietox", TRUE),
  list("dietox_power", "Weight ~ (Time + Feed + Evit)^2 + (1 | Pig)", "dietox", TRUE),
  list("orthodont_minus_one", "distance ~ age + Sex - 1 + (1 | Subject)", "orthodont", FALSE),
  list("orthodont_colon_factor", "distance ~ age:Sex + (1 | Subject)", "orthodont", TRUE),
  # b %in% a is the term a:b; an interaction's variables come in the formula's order
  list("orthodont_in", "distance ~ Sex + age %in% Sex + (1 | Subject)", "orthodont", TRUE),
  list("orthodont_order", "distance ~ Sex + I(age - 11):Sex + (1 | Subject)", "orthodont", TRUE)
)

datasets <- list(sleepstudy = sleep, dietox = dietox, orthodont = orthodont)
newdata <- list(sleepstudy = sleep_new, dietox = dietox_new, orthodont = orthodont_new)

out <- list()
for (case in cases) {
  name <- case[[1]]; formula <- case[[2]]; data <- datasets[[case[[3]]]]; reml <- case[[4]]
  nd <- if (name == "sleep_factor") sleep_new_int else newdata[[case[[3]]]]
  fit <- lmer(as.formula(formula), data = data, REML = reml,
              control = lmerControl(optimizer = "bobyqa",
                                    optCtrl = list(rhobeg = 2e-3, rhoend = 2e-11, maxfun = 1e5),
                                    check.conv.singular = "ignore"))
  vc <- VarCorr(fit)
  out[[name]] <- list(
    formula = formula, data = case[[3]], reml = reml,
    n = nobs(fit),
    loglik = as.numeric(logLik(fit)),
    fe_names = I(names(fixef(fit))), fe_params = I(unname(fixef(fit))),
    bse = I(unname(sqrt(diag(as.matrix(vcov(fit)))))),
    cov_re = lapply(vc, function(v) {
      m <- unclass(v); attr(m, "stddev") <- NULL; attr(m, "correlation") <- NULL
      list(names = I(colnames(m)), matrix = unname(m))
    }),
    scale = sigma(fit)^2,
    fitted = unname(fitted(fit)),
    fitted_rows = as.integer(names(fitted(fit))) - 1L,   # 0-based rows of the data kept
    newdata = nd,
    predict_new = unname(predict(fit, newdata = nd))
  )
}
write_json(out, file.path("tests", "data", "formula_lme4.json"), digits = NA, auto_unbox = TRUE,
           pretty = TRUE, matrix = "rowmajor", dataframe = "columns")
cat("wrote", length(out), "cases\n")
