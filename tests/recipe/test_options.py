"""Job options are declared once: the API's request, the command line's flags and vdcore's configs come from
``JobOptions``, so a new option, its range or its help cannot be missing from one of them."""

import argparse

import pytest
from pydantic import ValidationError

from recipe.options import JobOptions, add_option_flags, given_options
from service.models import JobRequest
from vdcore.config import TrainConfig


def test_bad_options_are_refused_with_the_option_named():
    for bad in ({"val_fraction": 1.0}, {"threshold": 100.0}, {"finetune_epochs": -1}, {"finetune_lr": 0.0},
                {"unit_multiple": 0}, {"unit_multiple": True}, {"finetune_hold": "rows"}, {"epochs": "5"},
                {"structured": "false"}, {"lr": float("nan")}, {"devcie": "cpu"}):
        with pytest.raises(ValidationError, match=next(iter(bad))):
            JobOptions(**bad)


def test_cross_field_rules_are_vdcores():
    with pytest.raises(ValidationError, match="KL warm-up needs"):
        JobOptions(kl_warmup_start=0.5, kl_warmup_end=0.2)


def test_vdcore_configs_are_built_from_the_options():
    options = JobOptions(epochs=7, batch_size=32, lr=0.01, seed=3, structured=True, finetune_epochs=4)
    train = options.train_config()
    assert (train.epochs, train.batch_size, train.lr, train.seed) == (7, 32, 0.01, 3)
    assert train.eval_batch_size == TrainConfig().eval_batch_size, "what a job does not offer keeps vdcore's"
    assert options.train_config(2).epochs == 2
    finetune = options.finetune_config()
    assert (finetune.epochs, finetune.lr, finetune.lr_decay_start) == (4, options.finetune_lr, 0.0)
    assert options.svd_config().granularity == "weight+unit"
    assert JobOptions().svd_config().granularity == "weight"
    assert JobOptions().hold() == "weights" and JobOptions(structured=True).hold() == "units"
    assert JobOptions(structured=True, finetune_hold="weights").hold() == "weights"


def test_every_option_is_a_flag_with_its_help_range_and_default():
    parser = argparse.ArgumentParser()
    add_option_flags(parser)
    flags = {action.dest: action for action in parser._actions if action.dest in JobOptions.model_fields}
    assert set(flags) == set(JobOptions.model_fields)
    for name, info in JobOptions.model_fields.items():
        assert info.description and info.description in flags[name].help.replace("%%", "%")
        assert f"default {info.default}" in flags[name].help
    assert "(>= 1, <= 10000; default 100)" in flags["epochs"].help
    assert flags["device"].choices == ("auto", "cpu", "cuda")


def test_flags_give_only_what_was_set_and_command_defaults_replace_the_jobs():
    parser = argparse.ArgumentParser()
    add_option_flags(parser)
    args = parser.parse_args(["--finetune-lr", "0.01", "--no-structured", "--finetune-hold", "units"])
    assert given_options(args) == {"finetune_lr": 0.01, "structured": False, "finetune_hold": "units"}
    assert JobOptions(**given_options(args)).finetune_lr == 0.01
    with pytest.raises(SystemExit):
        parser.parse_args(["--device", "tpu"])

    bench = argparse.ArgumentParser()
    add_option_flags(bench, {"epochs": 200})
    assert given_options(bench.parse_args([])) == {"epochs": 200}
    assert "default 200" in next(a.help for a in bench._actions if a.dest == "epochs")


def test_the_api_takes_the_options_as_they_are_declared():
    schema = JobRequest.model_json_schema()
    options = schema["$defs"]["JobOptions"]["properties"]
    assert set(options) == set(JobOptions.model_fields)
    assert options["epochs"]["maximum"] == 10_000 and options["epochs"]["default"] == JobOptions().epochs
    assert all(options[name]["description"] for name in options)
    assert JobRequest.model_validate({"model": {"preset": "lenet-300-100"}}).options == JobOptions()
