"""YAML's traps (src/normrepro/yaml_traps.py), through the config loader: each message says why
and how to write it, and the form it proposes is checked to load as what was meant."""

from __future__ import annotations

import copy
import re

import pytest
import yaml
from test_preflight import make_params, plan

from normrepro import config, yaml_traps


def test_an_exponent_without_a_dot_is_explained_with_a_form_yaml_reads():
    params = make_params()
    params["recipes"]["tiny"]["lr"] = "1e-3"  # what PyYAML makes of `lr: 1e-3`
    assert yaml.safe_load("lr: 1e-3")["lr"] == "1e-3"
    with pytest.raises(config.ParamsError) as err:
        plan(params)
    line = str(err.value).splitlines()[1].strip()
    assert line.startswith("recipes.tiny.lr: got '1e-3'; allowed: a number > 0 ('1e-3' is text")
    suggested = line.split("write ")[-1].rstrip(")").split(" or ")
    for form in suggested:  # each form the message proposes is the number, read by YAML 1.1
        assert yaml.safe_load(f"lr: {form.removeprefix('lr: ')}") == {"lr": 0.001}


def test_lr_scaling_linear_names_the_mapping_it_needs():
    params = make_params(lr_scaling="linear", batch_sizes=[8])
    with pytest.raises(config.ParamsError) as err:
        plan(params)
    assert "write it as a mapping: lr_scaling: {rule: linear, base_batch: N}" in str(err.value)
    form = re.search(r"lr_scaling: (\{.*?\})", str(err.value)).group(1).replace("N", "128")
    params["studies"]["tiny"]["lr_scaling"] = yaml.safe_load(form)
    _, runs = plan(params)  # the form, filled in, is valid
    assert runs["tiny"][0]["lr"] == pytest.approx(0.05 * 8 / 128)


def test_a_bad_indent_names_the_file_line_and_column(tmp_path):
    text = yaml.safe_dump(make_params(), sort_keys=False).splitlines()
    at = text.index("studies:") + 3  # the study's second key, one space too far left
    text[at] = text[at][1:]
    path = tmp_path / "params.yaml"
    path.write_text("\n".join(text) + "\n")
    with pytest.raises(config.ParamsError) as err:
        config.load_params(path)
    assert str(err.value).startswith(f"{path}:{at + 1}:")
    assert yaml_traps.check_syntax(path) == str(err.value)
    assert yaml_traps.main([str(path)]) == 1  # the same, for a --configfile overlay


def test_nested_config_strings_are_read_as_the_scalars_they_spell():
    """What Snakemake makes of --config 'studies={tiny: {enabled: false}}' (BaseLoader)."""
    params = make_params()
    params["studies"]["other"] = copy.deepcopy(params["studies"]["tiny"])
    over = {"studies": {"tiny": {"enabled": "false", "n_seeds": "3"}}, "runtime": {"pack": "2"}}
    _, runs = plan(config.deep_merge(params, over))
    assert list(runs) == ["other"]  # tiny disabled by the string 'false'
    planned = plan(config.deep_merge(params, {"studies": {"other": {"n_seeds": "3"}}}))[1]
    assert len(planned["other"]) == 3
    params["smoke"] = {"studies": {"tiny": {"enabled": "false"}}}  # a preset's trim, too
    params["scale"] = "smoke"
    assert list(plan(params)[1]) == ["other"]
    with pytest.raises(config.ParamsError, match="studies.tiny.title: got 42"):
        plan(config.deep_merge(params, {"studies": {"tiny": {"title": 42}}}))
    with pytest.raises(config.ParamsError, match="recipes.tiny.epochs: got 'many'"):
        plan(config.deep_merge(params, {"recipes": {"tiny": {"epochs": "many"}}}))
