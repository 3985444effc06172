"""The method registry is the one list of methods: configs, tests, README and sweeps follow it."""

from __future__ import annotations

import lightning as L
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from splml.builders import config_dir, loss_config
from splml.methods.combined import CombinedLoss
from splml.methods.registry import loss_names, method, methods, methods_table, register_method
from splml.utils.markdown import block_markers

CONF = config_dir()
README = CONF.parent / "README.md"
CONTEXT = {"seed": 1, "dataset": {"expected_positives": 2.9}, "optim": {"linear_probe_epochs": 1}}


def test_every_method_has_its_yaml_and_every_yaml_is_a_method():
    registered = methods()
    losses = {p.stem for p in (CONF / "loss").glob("*.yaml")}
    terms = {p.stem for p in (CONF / "loss" / "term").glob("*.yaml")}
    assert losses == {name for name, m in registered.items() if m.selectable}
    assert terms == {name for name, m in registered.items() if m.kind == "term"}
    for m in registered.values():
        assert (CONF / m.config).is_file(), m.name


@pytest.mark.parametrize("name", loss_names())
def test_each_yaml_builds_the_registered_method(name):
    m = method(name)
    loss = instantiate(OmegaConf.merge(CONTEXT, loss_config(name)).loss)
    assert type(loss) is m.loss and loss.name == name and loss.task == m.task
    if m.kind == "composition":
        assert isinstance(loss, CombinedLoss)
        assert (loss.base.name, loss.term.name) == m.parts
        assert method(m.parts[1]).kind == "term"
    # The stores it declares are the callbacks with a checkpointed state that the loss builds.
    stateful = {type(c) for c in loss.callbacks(6, 4) if type(c).state_dict is not L.Callback.state_dict}
    assert stateful == set(m.stores), name
    assert m.has_store == bool(m.stores)


def test_every_ablation_belongs_to_the_method_it_changes():
    ablations = {p.stem for p in (CONF / "ablation").glob("*.yaml")} - {"none"}
    owners = {a: m.name for m in methods().values() for a in m.ablations}
    assert set(owners) == ablations
    for ablation, owner in owners.items():
        changed = OmegaConf.load(CONF / "ablation" / f"{ablation}.yaml").loss
        options = loss_config(owner).loss
        assert set(changed) <= set(options), f"{ablation} sets options {owner} does not have"


def test_the_comparison_sweep_is_the_registered_comparison_set():
    comparison = loss_names(comparison=True)
    assert {"an", "full", "en_scl", "ll_cp", "em_apl", "role"} <= set(comparison)
    assert all(method(name).task == "classification" for name in comparison)


def test_every_method_documents_its_paper_and_formula():
    for m in methods().values():
        assert m.title and m.summary and m.formula, m.name
        assert m.paper.authors and m.paper.title and m.paper.venue, m.name


def test_the_readme_methods_table_is_the_generated_one():
    begin, end = block_markers("methods")
    text = README.read_text()
    assert begin in text and end in text, "README.md lost its methods table markers"
    block = text.split(begin, 1)[1].split(end, 1)[0].strip()
    assert block == methods_table().strip(), (
        "the README's methods table is stale: run python docs/make_methods_table.py"
    )


def test_registration_refuses_a_name_twice_or_a_class_under_another_name():
    from splml.methods.an import AssumeNegativeLoss
    from splml.methods.papers import COLE_2021

    details = {"title": "x", "summary": "x", "paper": COLE_2021, "formula": "x"}
    with pytest.raises(ValueError, match="registered twice"):
        register_method("an", **details)(AssumeNegativeLoss)
    with pytest.raises(ValueError, match="registered as 'not_an'"):
        register_method("not_an", **details)(AssumeNegativeLoss)
    with pytest.raises(KeyError, match="no method 'nonexistent'"):
        method("nonexistent")
