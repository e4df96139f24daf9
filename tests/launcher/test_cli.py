"""launch.py's command line is one vocabulary: `--local` means "on this machine" on every command, each
command's options are grouped by where they apply, and an option given where it does not apply is refused
(before anything starts), never silently ignored."""
import pytest

import launch
from launcher.cli import LOCAL, SAGEMAKER, build_parser

LOCAL_GROUP, SAGEMAKER_GROUP, AWS_GROUP = "on this machine (with --local)", "on SageMaker (without --local)", "AWS (SageMaker)"


def commands():
    parser = build_parser()
    return next(action for action in parser._actions if action.dest == "command").choices


def group_of(command, flag):
    return next(group.title for group in command._action_groups for action in group._group_actions
                if flag in action.option_strings)


def help_text(capsys, *argv):
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--help"])
    return capsys.readouterr().out


def test_local_means_on_this_machine_on_every_command():
    with_local = {name: command for name, command in commands().items() if "--local" in command._option_string_actions}
    assert set(with_local) == {"train", "deploy", "predict", "delete", "transform", "report"}
    for name, command in with_local.items():
        action = command._option_string_actions["--local"]
        assert group_of(command, "--local") == LOCAL_GROUP, name
        assert "on this machine" in action.help, name
        # a switch, or a switch with an optional HOW (docker|process|auto): never a value it needs
        assert action.nargs in (0, "?"), name
        assert action.nargs == 0 or set(action.choices) == {"auto", "docker", "process"}, name


def test_report_names_its_job_with_job_in_both_places():
    args = build_parser().parse_args(["report", "--local", "--job", "first"])
    assert args.local is True and args.job == "first"
    assert build_parser().parse_args(["report", "--job", "ic-2026"]).local is False


@pytest.mark.parametrize("name", ["data", "jobs", "clean"])
def test_commands_on_this_machine_only_show_no_aws_options(capsys, name):
    text = help_text(capsys, name)
    assert "--region" not in text and "--dry-run" not in text and "SageMaker" not in text


@pytest.mark.parametrize("name", ["upload", "tune"])
def test_sagemaker_only_commands_show_no_local_options(capsys, name):
    text = help_text(capsys, name)
    assert "--local" not in text and LOCAL_GROUP not in text and "--region" in text


@pytest.mark.parametrize("name", ["train", "deploy", "predict", "delete", "transform", "report"])
def test_each_option_of_a_two_place_command_sits_in_the_group_where_it_applies(capsys, name):
    command = commands()[name]
    assert [g.title for g in command.where[LOCAL]] == [LOCAL_GROUP]
    assert [g.title for g in command.where[SAGEMAKER]] == [SAGEMAKER_GROUP, AWS_GROUP]
    text = help_text(capsys, name)
    shown = [g.title for g in command.where[LOCAL] + command.where[SAGEMAKER] if g._group_actions]  # argparse hides empty ones
    assert sorted(shown, key=text.index) == shown and all(title in text for title in shown)
    for flag in ("--port", "--model", "--replace", "--verbose", "--detach"):
        if flag in command._option_string_actions:
            assert group_of(command, flag) == LOCAL_GROUP, (name, flag)
    for flag in ("--endpoint", "--instance-type", "--no-spot", "--kms-key", "--attach", "--job-name", "--all"):
        if flag in command._option_string_actions and (name, flag) != ("train", "--job-name"):
            assert group_of(command, flag) == SAGEMAKER_GROUP, (name, flag)


@pytest.mark.parametrize("argv, refused, where", [
    (["train", "--local", "--no-spot"], "--no-spot", "on SageMaker"),
    (["train", "--local", "process", "--max-run", "60"], "--max-run", "on SageMaker"),
    (["train", "--replace", "--data", "s3://b/d"], "--replace", "with --local"),
    (["deploy", "--model", "model.tar.gz"], "--model", "with --local"),
    (["deploy", "--local", "--endpoint", "e1", "--instance-count", "2"], "--endpoint, --instance-count", "on SageMaker"),
    (["predict", "--local", "--endpoint", "e1", "a.jpg"], "--endpoint", "on SageMaker"),
    (["delete", "--port", "8081"], "--port", "with --local"),
    (["transform", "--local", "--data", "d", "--instance-type", "ml.m5.large"], "--instance-type", "on SageMaker"),
    (["transform", "--data", "s3://b/d", "--resume"], "--resume", "with --local"),
    (["report", "--local", "--job", "first", "--region", "eu-west-1"], "--region", "on SageMaker"),
])
def test_an_option_given_where_it_does_not_apply_is_refused_by_name(capsys, argv, refused, where):
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)  # launch.main's first step
    err = capsys.readouterr().err
    assert exited.value.code == 2 and f"error: {refused}: only {where}" in err, err


def test_the_refusal_comes_before_the_command_runs(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        launch.main(["predict", "--local", "--endpoint", "e1", "--port", "9", str(tmp_path / "a.jpg")])
    assert exited.value.code == 2 and "error: --endpoint: only on SageMaker" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", [
    ["train", "--local", "process", "--replace", "--verbose", "--instance-count", "2", "--hp", "epochs=1"],
    ["train", "--data", "s3://b/d", "--no-spot", "--max-run", "60", "--region", "eu-west-1", "--dry-run"],
    ["deploy", "--local", "docker", "--model", "m.tar.gz", "--port", "8081", "--detach"],
    ["deploy", "--job", "j", "--serverless", "2048", "--dry-run"],
    ["predict", "--local", "--port", "8081", "a.jpg"],
    ["transform", "--local", "--data", "d", "--resume", "--stop-on-bad", "--max-concurrent", "2"],
    ["transform", "--summarize", "out"],
    ["report", "--job", "ic-2026", "--region", "eu-west-1"],
])
def test_options_where_they_apply_parse(argv):
    build_parser().parse_args(argv)
