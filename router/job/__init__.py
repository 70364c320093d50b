"""The job: the only code that drives Ray. It composes the stages, runs the budget's passes,
schedules and feeds the engines, writes and resumes the output.

Read it top down; each module imports only modules listed below it (and router's lower
packages: stages, backends, method, budget, config, schema):

    run            `router run`: route, answer, count what was written, _report.json
    plan           `router plan`: read -> encode -> score, the budget's solve, assign, tally
    answer         engine pool by engine pool: feed the engines, commit shards, engine faults
    prestart       engines started while the prompts are encoded
    build          the Ray Data stages (StageSpec: callable, arguments, resources)
    engines        engine pools: stand-in weights, GPU schedule, engine settings and failures
    result         RunResult, Phase, PoolRun; _report.json
    budget_passes  the budget's passes on Ray (pass 1 sink, pass 2, caps, groups)
    frontier       the predicted quality-cost frontier
    tally          rows and sums per model (ModelTally) and per status; the output's scan
    validate       checks before Ray starts
    output         the output folder: shards, manifest, resume
    schedule       engine pools on GPUs (pure)
    cluster        Ray start-up; passes run in the driver or as Ray Data tasks
"""
