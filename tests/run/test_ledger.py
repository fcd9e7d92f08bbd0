"""The run's ledger: each piece checked against its planned ids, the shards tiling the selection, the counts."""

from tasks.run.ledger import KEPT_PROBLEMS, Ledger


def test_a_run_whose_pieces_end_as_planned_holds():
    ledger = Ledger(decisions_in=7, input_failed=1, planned=6)
    ledger.explained("shard-00000", 0, ["a", "b", "c"], ["a", "c"], ["b"], render=True)
    ledger.rendered("shard-00000 reports 0-1", ["a", "c"], ["c"], ["a"])
    ledger.explained("shard-00001.0", 3, ["d"], ["d"], [], render=True)
    ledger.unrendered(1)  # d: explained, its report cut by the deadline
    ledger.worker_failed(4)
    ledger.unexplained(5, 1)
    accounting = ledger.close()
    assert accounting == {"decisions_in": 7, "reported": 1, "failed": 4, "not_reached": 2, "holds": True,
                          "problem": None}


def test_without_reports_every_explained_decision_is_reported():
    ledger = Ledger(decisions_in=3, input_failed=0, planned=3)
    ledger.explained("shard-00000", 0, ["a", "b", "c"], ["c", "b", "a"], [], render=False)  # any order
    assert ledger.close()["reported"] == 3 and ledger.close()["holds"]


def test_a_shard_that_returns_other_ids_breaks_the_accounting():
    ledger = Ledger(decisions_in=2, input_failed=0, planned=2)
    ledger.explained("shard-00000", 0, ["a", "b"], ["a", "z"], [], render=False)
    accounting = ledger.close()
    assert not accounting["holds"]
    assert accounting["problem"] == "shard-00000: 2 ids for 2 planned (1 missing, 1 unknown or repeated)"


def test_a_repeated_id_is_caught_even_when_the_counts_add_up():
    ledger = Ledger(decisions_in=2, input_failed=0, planned=2)
    ledger.explained("shard-00000", 0, ["a", "b"], ["a"], ["a"], render=False)
    assert "1 missing, 1 unknown or repeated" in ledger.close()["problem"]


def test_a_render_batch_must_end_with_its_explained_decisions():
    ledger = Ledger(decisions_in=2, input_failed=0, planned=2)
    ledger.explained("shard-00000", 0, ["a", "b"], ["a", "b"], [], render=True)
    ledger.rendered("shard-00000 reports 0-1", ["a", "b"], ["a"], [])
    problem = ledger.close()["problem"]
    assert "shard-00000 reports 0-1: 1 ids for 2 planned" in problem
    assert problem.endswith("in (2) != reported + failed + not_reached (1)")


def test_explained_decisions_left_without_a_report_or_an_ending_break_the_accounting():
    ledger = Ledger(decisions_in=2, input_failed=0, planned=2)
    ledger.explained("shard-00000", 0, ["a", "b"], ["a", "b"], [], render=True)
    ledger.rendered("shard-00000 reports 0-0", ["a"], ["a"], [])
    assert "1 explained decision(s) neither rendered, failed nor not reached" in ledger.close()["problem"]


def test_shards_must_tile_the_planned_selection_once():
    gap = Ledger(decisions_in=4, input_failed=0, planned=4)
    gap.explained("shard-00000", 0, ["a"], ["a"], [], render=False)
    gap.explained("shard-00002", 2, ["c", "d"], ["c", "d"], [], render=False)
    assert gap.close()["problem"].startswith("decisions 1-1 of the selection unaccounted for")
    twice = Ledger(decisions_in=2, input_failed=0, planned=2)
    twice.explained("shard-00000", 0, ["a", "b"], ["a", "b"], [], render=False)
    twice.unexplained(1, 1)
    assert twice.close()["problem"].startswith("decisions 1-1 of the selection counted twice")
    short = Ledger(decisions_in=3, input_failed=0, planned=3)
    short.explained("shard-00000", 0, ["a", "b"], ["a", "b"], [], render=False)
    assert "1 planned decision(s) unaccounted for at the end" in short.close()["problem"]


def test_only_the_first_problems_are_kept_word_for_word():
    ledger = Ledger(decisions_in=20, input_failed=0, planned=20)
    for first in range(20):
        ledger.explained(f"shard-{first:05d}", first, ["x"], ["y"], [], render=False)
    problem = ledger.close()["problem"]
    assert problem.count("shard-") == KEPT_PROBLEMS and problem.endswith(f"and {20 - KEPT_PROBLEMS} more")
