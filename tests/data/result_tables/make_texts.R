# R's printed text of result tables and R's number formatting, the test data of
# tests/inference/test_result_table.py (ResultTable, mixedlm_sklearn/_table.py).
#
# Run from this directory:  Rscript make_texts.R
# Made with R 4.2.2 (Debian), lme4 1.1-31, lmerTest 3.1-3, emmeans 1.8.4.1, jsonlite 1.8.4,
# in a UTF-8 locale (the legend's quotes), options(width = 80) unless stated.
#
# Each table is the data.frame of a shared reference (../reference/extras) given the class
# and attributes the R package gives it, then print()ed by R's own method: print.anova
# (lmerTest's anova / ranova / drop1, lme4's anova(m0, m1, m2)), emmeans' print.summary_emm,
# print.data.frame. The headings are the ones those packages attach (checked on real fits:
# anova(m), ranova(m), drop1(m), anova(m0, m1), emmeans(m, "Sex") and pairs() of
# lmer(distance ~ age * Sex + (age | Subject), Orthodont) print the same text).
suppressMessages({ library(jsonlite); library(emmeans) })
options(width = 80)

ref <- function(name) fromJSON(file.path("..", "reference", "extras", paste0(name, ".json")))
column <- function(v) { v <- unlist(v); if (is.character(v)) suppressWarnings(as.numeric(ifelse(v == "NA", NA, v))) else v }
frame <- function(tab) {
  cols <- setdiff(names(tab), "rows")
  df <- as.data.frame(lapply(tab[cols], column), check.names = FALSE)
  rownames(df) <- unlist(tab$rows)
  df
}
anova_table <- function(tab, heading) structure(frame(tab), heading = heading, class = c("anova", "data.frame"))
save <- function(name, x, width = 80) {
  old <- options(width = width)
  on.exit(options(old))
  writeLines(capture.output(print(x)), paste0(name, ".txt"), useBytes = TRUE)
}

orth <- ref("orthodont_agesex_slopes_reml")
save("orthodont_anova_type3", anova_table(orth$anova_type3_satterthwaite,
     "Type III Analysis of Variance Table with Satterthwaite's method"))
save("orthodont_anova_type1", anova_table(orth$anova_type1_satterthwaite,
     "Type I Analysis of Variance Table with Satterthwaite's method"))
save("orthodont_anova_type3_kr", anova_table(orth$anova_type3_kenward_roger,
     "Type III Analysis of Variance Table with Kenward-Roger's method"))
two <- orth$anova_type3_satterthwaite
two <- lapply(two, function(v) unlist(v)[1:2])  # the first two rows, as table.loc[["age", "Sex"]]
save("orthodont_anova_type3_two_rows", anova_table(two,
     "Type III Analysis of Variance Table with Satterthwaite's method"))
save("orthodont_anova_type3_width40", anova_table(orth$anova_type3_satterthwaite,
     "Type III Analysis of Variance Table with Satterthwaite's method"), width = 40)
save("orthodont_anova_type3_width58", anova_table(orth$anova_type3_satterthwaite,
     "Type III Analysis of Variance Table with Satterthwaite's method"), width = 58)
save("orthodont_ranova", anova_table(orth$ranova, c("ANOVA-like table for random-effects: Single term deletions",
     "\nModel:", "distance ~ age + Sex + (age | Subject) + age:Sex")))
drop <- orth$drop1
drop$rows <- "age:Sex"
save("orthodont_drop1", anova_table(drop, c("Single term deletions using Satterthwaite's method:",
     "\nModel:", "distance ~ age * Sex + (age | Subject)")))

seq3 <- ref("sleepstudy_model_sequence")
save("sleepstudy_models", anova_table(seq3$anova, c("Data: sleepstudy", "Models:",
     "m0: Reaction ~ 1 + (Days | Subject)", "m1: Reaction ~ Days + (Days | Subject)",
     "m2: Reaction ~ Days + I(Days^2) + (Days | Subject)")))
# as print.data.frame shows AIC(m0, m1, m2) (df, AIC) with a missing value added
aic <- data.frame(df = c(5, 6, 7, NA), AIC = c(seq3$anova$AIC, NA),
                  row.names = c("m0", "m1", "m2", "m3"))
save("sleepstudy_aic_frame", aic)

pen <- ref("penicillin_crossed_kr")
save("penicillin_ranova", anova_table(pen$ranova, c("ANOVA-like table for random-effects: Single term deletions",
     "\nModel:", "diameter ~ (1 | plate) + (1 | sample)")))

emm <- as.data.frame(lapply(orth$emmeans_sex, unlist), check.names = FALSE)
emm$Sex <- factor(emm$Sex, levels = emm$Sex)
save("orthodont_emmeans_sex", structure(emm, estName = "emmean", pri.vars = "Sex",
     mesg = c("Degrees-of-freedom method: kenward-roger", "Confidence level used: 0.95"),
     class = c("summary_emm", "data.frame")))
prs <- as.data.frame(lapply(orth$emmeans_sex_pairs, unlist), check.names = FALSE)
prs$contrast <- factor(prs$contrast)
save("orthodont_emmeans_pairs", structure(prs, estName = "estimate", pri.vars = "contrast",
     mesg = "Degrees-of-freedom method: kenward-roger", class = c("summary_emm", "data.frame")))

# Synthetic tables for the edge cases: scientific notation, negative numbers, Inf and NA
# in print.anova; p-values near emmeans' <.0001, infinite df and a missing estimate.
edge <- data.frame(Estimate = c(-1234567.5, 0.000123, NA, 2.5),
                   Df = c(1, 2, NA, 40), Chisq = c(1e-6, 12.3456789, NA, Inf),
                   "Pr(>Chisq)" = c(0.99, 1e-300, NA, 0.0999), check.names = FALSE,
                   row.names = c("a", "bb", "ccc", "dddd"))
save("synthetic_anova", structure(edge, heading = c("A synthetic table\n", "with a two-line heading"),
     class = c("anova", "data.frame")))
syn <- data.frame(contrast = factor(c("a - b", "a - c", "b - c long label")),
                  estimate = c(0.00123456, 12.3456, NA), SE = c(0.0001, 0.5, 1.2),
                  df = c(10.456, 1234.5, Inf), t.ratio = c(12.3456, 24.6912, -2.675),
                  p.value = c(0.00003, 0.00007, 0.51234))
save("synthetic_emmeans", structure(syn, estName = "estimate", pri.vars = "contrast",
     mesg = c("P value adjustment: tukey method for comparing a family of 3 estimates"),
     class = c("summary_emm", "data.frame")))

# R's format(), format.pval() and zapsmall() on random vectors (numbers written with 17
# significant digits, which read back exactly).
set.seed(20240611)
draw <- function(n) {
  kind <- sample(1:4, n, replace = TRUE)
  x <- ifelse(kind == 1, signif(10^runif(n, -12, 9), sample(1:9, n, TRUE)),
       ifelse(kind == 2, round(10^runif(n, -3, 6), sample(0:4, n, TRUE)),
       ifelse(kind == 3, sample(c(0, 0.5, 2.5, 9996, 99999.5, 1e5, 0.0001, 1e-15, 123456789), n, TRUE),
                          10^runif(n, -300, 300))))
  x * ifelse(runif(n) < 0.3, -1, 1)
}
cases <- lapply(1:400, function(i) {
  x <- draw(sample(1:5, 1))
  if (runif(1) < 0.1) x[sample(length(x), 1)] <- NA
  d <- sample(1:7, 1)
  p <- c(10^runif(sample(1:4, 1), -20, 0), if (runif(1) < 0.3) 10^runif(1, -40, -16))
  list(x = sprintf("%.17g", x), digits = d, format = trimws(format(x, digits = d)),
       zapsmall = sprintf("%.17g", zapsmall(x, d)),
       p = sprintf("%.17g", p), format_pval = format.pval(p, digits = d))
})
writeLines(toJSON(cases, auto_unbox = TRUE, pretty = FALSE), "r_format_cases.json")
