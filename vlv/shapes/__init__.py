"""The shapes world: the offline miniature in which the whole VLV method runs on a laptop CPU in minutes and is
checked against ground truth. The method library (`vlv.*`) does not know it; it uses the library like any user.

    world.py      scenes, the exact caption grammar and its parser, the held-out split, the renderer
    preset.py     the `shapes` preset and the committed assets (teacher, stage-1 checkpoint)
    reader.py     the attribute reader and the scores
    teacher.py    the recipe that trained the committed teacher
    stage1.py     the stage-1 recipe with the composition term, the held-out probe of a run
    evaluate.py   captions, reconstructions, teacher samples and compositions scored against ground truth
    demo.py       `vlv demo`; ablations.py `--ablations`; report.py the HTML report; cli.py the commands
"""
