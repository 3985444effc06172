"""Spatial consistency (Verelst et al. 2023): the SCL term, its heatmap store (geometry, storage, callback) and figures."""
