# Supplementary references for the inference tables (issue 14): Kenward-Roger, anova
# tables, emmeans, R2/ICC, evaluated by R at lme4's own estimates.
#
# Why: the shared references (../extras) hold R's tables but not the variance parameters
# they were computed at. Storing theta and sigma lets the tests evaluate our formulas at
# exactly lme4's point, so they check the formulas to R's digits even where our optimiser
# lands elsewhere (on Orthodont `age * Sex + (age | Subject)` ours reaches a REML criterion
# 5.6e-6 below lme4's, which moves vcov by 5.6e-4 relative).
#
# Run from this directory:  Rscript make_references.R
# R 4.x with lme4 1.1-31, lmerTest 3.1-3, pbkrtest 0.5.2, emmeans 1.8.4, performance 0.10.2.
suppressMessages({
  library(lme4); library(lmerTest); library(pbkrtest); library(emmeans)
  library(performance); library(jsonlite)
})
data_dir <- "/work/shared/datasets"
deparse2 <- function(x) paste(safeDeparse(x), collapse = " ")
safeDeparse <- function(x) deparse(x, width.cutoff = 500L)
rd <- function(name) read.csv(file.path(data_dir, paste0(name, ".csv")), stringsAsFactors = FALSE)

tab <- function(df) {
  out <- list(rows = rownames(df))
  for (nm in colnames(df)) {
    v <- df[[nm]]
    out[[nm]] <- if (is.factor(v)) as.character(v) else v
  }
  out
}
mat <- function(m) { m <- as.matrix(m); list(rows = rownames(m), cols = colnames(m), values = unname(m)) }

varcorr <- function(m) {
  vc <- VarCorr(m)
  lapply(names(vc), function(g) {
    s <- vc[[g]]
    list(group = g, names = colnames(s), cov = unname(s[, , drop = FALSE]))
  })
}

anova_entry <- function(m, type, ddf) {
  a <- anova(m, type = type, ddf = ddf)
  hyp <- attr(a, "hypotheses")
  list(table = tab(as.data.frame(a)), hypotheses = lapply(hyp, mat))
}

emm_entry <- function(m, specs, at = NULL, custom = NULL, mode = "kenward-roger") {
  e <- if (is.null(at)) emmeans(m, specs, lmer.df = mode) else emmeans(m, specs, at = at, lmer.df = mode)
  out <- list(specs = specs, at = at, mode = mode, table = tab(as.data.frame(summary(e))),
              grid_X = unname(e@linfct))
  out$pairs <- lapply(setNames(nm = c("tukey", "holm", "bonferroni", "none")), function(adj)
    tab(as.data.frame(summary(pairs(e, adjust = adj)))))
  if (!is.null(custom)) {
    out$custom <- list(coefficients = custom,
                       table = tab(as.data.frame(summary(contrast(e, custom, adjust = "none")))))
  }
  out
}

r2_entry <- function(m) {
  r2 <- r2_nakagawa(m); ic <- icc(m)
  list(r2_marginal = unname(r2$R2_marginal), r2_conditional = unname(r2$R2_conditional),
       icc_adjusted = ic$ICC_adjusted, icc_unadjusted = ic$ICC_unadjusted)
}

fit_entry <- function(m, name, formula, prep, anova = TRUE, emm = list(), r2 = TRUE, weights = NULL) {
  kr <- vcovAdj(m)
  sk <- summary(m, ddf = "Kenward-Roger")$coefficients
  ss <- summary(m)$coefficients
  out <- list(
    name = name, formula = formula, prep = prep,
    versions = list(lme4 = as.character(packageVersion("lme4")),
                    lmerTest = as.character(packageVersion("lmerTest")),
                    pbkrtest = as.character(packageVersion("pbkrtest")),
                    emmeans = as.character(packageVersion("emmeans")),
                    performance = as.character(packageVersion("performance"))),
    reml_criterion = REMLcrit(m), theta = unname(getME(m, "theta")), sigma = sigma(m),
    varcorr = varcorr(m), fixef = as.list(fixef(m)),
    vcov = mat(vcov(m)), vcov_kr = mat(as.matrix(kr)),
    coef_kr = tab(as.data.frame(sk)), coef_satterthwaite = tab(as.data.frame(ss))
  )
  # KR df of a few arbitrary contrasts (one row each, then all of them jointly)
  p <- length(fixef(m)); set.seed(1)
  L <- matrix(round(rnorm(3 * p), 2), nrow = 3)
  out$lb_ddf <- list(L = L, ddf = sapply(1:3, function(i) Lb_ddf(L[i, ], vcov(m), kr)))
  km <- KRmodcomp(m, L)
  out$krmodcomp <- list(L = L, test = tab(as.data.frame(km$test)))
  if (anova) {
    out$anova <- list(
      type1_satterthwaite = anova_entry(m, "1", "Satterthwaite"),
      type3_satterthwaite = anova_entry(m, "3", "Satterthwaite"),
      type1_kenward_roger = anova_entry(m, "1", "Kenward-Roger"),
      type3_kenward_roger = anova_entry(m, "3", "Kenward-Roger"))
    d1 <- drop1(m)
    out$drop1 <- list(table = tab(as.data.frame(d1)), hypotheses = lapply(attr(d1, "hypotheses"), mat))
  }
  rv <- ranova(m)
  out$ranova <- c(tab(as.data.frame(rv)), list(formulae = sapply(attr(rv, "formulae"), deparse2)))
  if (length(emm)) out$emmeans <- emm
  if (r2) out$r2 <- r2_entry(m)
  out
}

write <- function(x, name) {
  writeLines(toJSON(x, digits = NA, auto_unbox = TRUE, null = "null", na = "string", pretty = TRUE),
             paste0(name, ".json"))
}

# A. Orthodont, balanced, one factor with a correlated slope (the shared reference's model)
d <- rd("orthodont"); d$Sex <- factor(d$Sex, levels = c("Male", "Female"))
m <- lmer(distance ~ age * Sex + (age | Subject), d)
e <- list(emm_entry(m, "Sex"), emm_entry(m, "Sex", at = list(age = 14)),
          emm_entry(m, "Sex", mode = "satterthwaite"), emm_entry(m, "Sex", mode = "asymptotic"))
x <- fit_entry(m, "orthodont_slopes", "distance ~ age * Sex + (age | Subject)",
               "Sex as a factor with levels Male, Female", emm = e)
x$r2_intercept_model <- r2_entry(lmer(distance ~ age * Sex + (1 | Subject), d))
write(x, "orthodont_slopes")

# B. dietox: unbalanced, 3-level factors, multi-df terms, KR F scaling != 1
d <- rd("dietox")
m <- lmer(Weight ~ Time * Evit + Cu + (Time | Pig), d)
e <- list(emm_entry(m, "Evit", custom = list(ctl_vs_rest = c(1, -0.5, -0.5), lin = c(-1, 0, 1))),
          emm_entry(m, c("Evit", "Cu")),
          emm_entry(m, "Cu", at = list(Time = 4)))
write(fit_entry(m, "dietox_unbalanced", "Weight ~ Time * Evit + Cu + (Time | Pig)",
                "none (Evit, Cu, Pig as read)", emm = e), "dietox_unbalanced")

# C. grouseticks: crossed factors with fixed effects, unbalanced
d <- rd("grouseticks"); d$lticks <- log(d$TICKS + 1)
d$YEAR <- factor(d$YEAR); d$BROOD <- factor(d$BROOD); d$LOCATION <- factor(d$LOCATION)
m <- lmer(lticks ~ YEAR * cHEIGHT + (1 | BROOD) + (1 | LOCATION), d)
write(fit_entry(m, "grouseticks_crossed", "lticks ~ YEAR * cHEIGHT + (1 | BROOD) + (1 | LOCATION)",
                "lticks = log(TICKS + 1); YEAR, BROOD, LOCATION factors",
                emm = list(emm_entry(m, "YEAR"))), "grouseticks_crossed")

# D. sleepstudy with independent intercept and slope (lme4 splits (Days || Subject) in two terms)
d <- rd("sleepstudy")
m <- lmer(Reaction ~ Days + (Days || Subject), d)
write(fit_entry(m, "sleepstudy_diagonal", "Reaction ~ Days + (Days || Subject)", "none",
                anova = FALSE), "sleepstudy_diagonal")

# E. dietox with a 3 x 3 random-effects covariance (the order of pbkrtest's parameters)
d <- rd("dietox"); d$T2 <- (d$Time - 6)^2 / 10
m <- lmer(Weight ~ Time + T2 + (Time + T2 | Pig), d)
write(fit_entry(m, "dietox_q3", "Weight ~ Time + T2 + (Time + T2 | Pig)", "T2 = (Time - 6)^2 / 10",
                anova = FALSE), "dietox_q3")

# F. sleepstudy with prior weights: what pbkrtest does with them
d <- rd("sleepstudy"); d$w <- 1 + (d$Days %% 3)
m <- lmer(Reaction ~ Days + (Days | Subject), d, weights = w)
write(fit_entry(m, "sleepstudy_weighted", "Reaction ~ Days + (Days | Subject), weights = w",
                "w = 1 + Days %% 3", anova = FALSE, r2 = FALSE), "sleepstudy_weighted")

# G. Penicillin, crossed, intercept only (the shared reference's model) + R2
d <- rd("penicillin")
m <- lmer(diameter ~ 1 + (1 | plate) + (1 | sample), d)
write(fit_entry(m, "penicillin_crossed", "diameter ~ 1 + (1 | plate) + (1 | sample)", "none",
                anova = FALSE), "penicillin_crossed")

# H. dietox with a factor x factor interaction (unbalanced cells): type III contrasts of
#    main effects contained in the interaction; emmeans averaging over Cu
d <- rd("dietox")
m <- lmer(Weight ~ Time + Evit * Cu + (1 | Pig), d)
write(fit_entry(m, "dietox_factorial", "Weight ~ Time + Evit * Cu + (1 | Pig)", "none",
                emm = list(emm_entry(m, "Evit"), emm_entry(m, c("Cu", "Evit")))),
      "dietox_factorial")

# I. the same with sum-to-zero contrasts: lmerTest remakes the design with treatment
#    contrasts and maps the type III contrasts back
m <- lmer(Weight ~ Time + Evit * Cu + (1 | Pig), d, contrasts = list(Evit = "contr.sum", Cu = "contr.sum"))
write(fit_entry(m, "dietox_factorial_sum", "Weight ~ Time + Evit * Cu + (1 | Pig), contr.sum",
                "contrasts = list(Evit = 'contr.sum', Cu = 'contr.sum')",
                emm = list(emm_entry(m, "Evit")), r2 = FALSE), "dietox_factorial_sum")

# J. a transformed covariate: emmeans evaluates log(age) at the mean of age
d <- rd("orthodont"); d$Sex <- factor(d$Sex, levels = c("Male", "Female"))
m <- lmer(distance ~ log(age) * Sex + (1 | Subject), d)
write(fit_entry(m, "orthodont_logage", "distance ~ log(age) * Sex + (1 | Subject)",
                "Sex as a factor with levels Male, Female", anova = FALSE, r2 = FALSE,
                emm = list(emm_entry(m, "Sex"))), "orthodont_logage")
