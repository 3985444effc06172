"""ROLE (Cole et al. 2021): the loss and its learned label-estimate table."""
