"""Test-wide setup: 8 simulated CPU devices, set before jax is first imported."""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests never write to the user's XLA cache (~/.cache/bert_jax/xla); a test that wants the cache names its own.
os.environ.setdefault("BERT_JAX_COMPILE_CACHE", "off")
# The flags `bert-jax` starts XLA with: in-process runs here must compile as the CLI's subprocesses do (the
# vector width changes float rounding), or a resumed CLI run could not match an in-process one bit for bit.
from bert_jax.xla_flags import add_default_xla_flags  # noqa: E402  (imports no jax)

add_default_xla_flags()

import jax  # noqa: E402

assert jax.device_count() == 8, "conftest must run before anything imports jax"


# The longest tests not marked where they are defined (20-65 s each on 2 loaded cores, measured with
# `python -m pytest -q -n 2 --durations=0`; several are one case of a parametrised test). They run in the
# long set (`-m slow`) with the others, so the README's quick command stays under 15 minutes on 2 cores.
SLOW_TESTS = (
    "test_benchmarks.py::test_device_scaling_gives_the_same_losses_on_two_devices_and_over_rounds",
    "test_evaluate_objectives.py::test_evaluate_scores_plm_and_span_corruption_against_their_floor[span_corruption-",
    "test_sparse_final_layer.py::test_sparse_final_layer_equals_the_whole_layer_then_a_gather[bert]",
    "test_sparse_final_layer.py::test_dropout_draws_elsewhere_are_untouched",
    "test_packing_losses.py::test_a_packed_row_has_the_loss_and_gradients_of_its_examples_run_alone[xla-mlm]",
    "test_learning.py::test_mlm_predicts_masked_words_from_their_neighbours",
    "test_learning.py::test_ltr_predicts_the_next_word_and_cannot_see_it",
    "test_benchmarks.py::test_quick_run_writes_the_schema_and_sane_losses",
    "test_finetune.py::test_finetune_from_an_ltr_pretraining_workdir",
    "test_pretrain.py::test_pmap_strategy_matches_mesh",
    "test_objectives.py::test_loss_falls_and_pmap_matches_mesh[mlm+0.5*sop]",
    "test_objectives.py::test_loss_falls_and_pmap_matches_mesh[mlm+corrupted]",
    "test_objectives.py::test_loss_falls_and_pmap_matches_mesh[ltr]",
    "test_objectives.py::test_loss_falls_and_pmap_matches_mesh[mlm+sbo]",
    "test_model.py::test_scan_and_remat_equal_the_plain_stack[variant0]",
    "test_finetune_predictions.py::test_squad_predictions_json_scores_as_reported_and_other_files_are_predicted",
    "test_attention_impl.py::test_dot_product_attention_equals_the_xla_path_in_fp32[learned-False]",
    "test_reliability.py::test_disk_full_while_saving_keeps_the_previous_checkpoint",
    "test_finetune.py::test_paper_variants_learn[features]",
    "test_reliability.py::test_incompatible_resume_is_a_one_line_error_and_keeps_the_run[num_layers]",
    "test_finetune.py::test_sst2_protocol_beats_chance_and_resumes",
    "test_pretrain.py::test_speed_settings_stay_out_of_the_saved_model",
    "test_reliability.py::test_corrupt_newest_checkpoints_in_a_workdir_are_skipped_and_kept",
)


def pytest_collection_modifyitems(config, items):
    import pytest

    unknown = set(SLOW_TESTS)
    for item in items:
        nodeid = item.nodeid.removeprefix("tests/")
        for prefix in SLOW_TESTS:
            if nodeid.startswith(prefix):
                item.add_marker(pytest.mark.slow)
                unknown.discard(prefix)
    # A renamed test must not drop silently out of the list: a name whose file was collected whole must match.
    whole_files = {item.nodeid.removeprefix("tests/").split("::")[0] for item in items}
    if not config.getoption("keyword") and not any("::" in arg for arg in config.args):
        missing = sorted(p for p in unknown if p.split("::")[0] in whole_files)
        if missing:
            raise pytest.UsageError(f"tests/conftest.py SLOW_TESTS names tests that do not exist: {missing}")
