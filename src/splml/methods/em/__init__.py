"""EM and EM + APL (Zhou et al. 2022): the losses and the soft-negative store."""
