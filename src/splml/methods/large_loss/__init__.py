"""Large Loss Matters (Kim et al. 2022): LL-R, LL-Ct, LL-Cp and LL-Cp's corrected-label store."""
