"""Multi-label contrastive losses for task=retrieval: SupCon, Jaccard-SupCon, MulSupCon, MACL and what they share."""
