"""The bootstrapping loop: pre-train -> fine-tune captioner and filter -> CapFilt -> pre-train again.

    from pipelines.rounds.run import run_rounds
    from pipelines.rounds.settings import RoundsSettings
    run_rounds(RoundsSettings(web=..., human=[...], eval=[...], rounds=1, output=...))
"""
