"""Expected negatives / positives and the consistency term (Verelst et al. 2023): EN, EP, CL and their EMA score store."""
