"""The labs' claims measured over samples of scenes and seeds, as rates and means with intervals (`stats`).

One function per claim family, used by the labs (a small sample beside one worked example) and by
`pipelines/claims.py` (N = 64, the numbers README and the labs quote):

    scenes.py         the sample: rendered scenes (`scene_draws`) and the sample sizes of labs, QUICK and claims.py
    naive_noising.py  lab 1: edit done / layout kept per strength (`strength_tradeoff`, `tradeoff_claims`)
    posterior.py      lab 2: q_sigma keeps the marginals (`marginal_study`), DDIM's Table 1 as paired noise gaps and
                      how often its orderings hold (`sampler_study`, `sampler_claims`)
    inversion.py      lab 3: reconstruction PSNR against S and under guidance, DDIM's wrong basins and their fixes,
                      the method table at (S, w) with edits (`method_study`, `method_claims`, `basin_fix_claims`)
    p2p.py            lab 4: word swaps with and without P2P, local blend with our mask and the official P2P mask

An application layer (ARCHITECTURE.md): it imports the maths core and foundations only, no notebook package.
"""

from .scenes import LAB_STUDY_SIZE, QUICK_STUDY_SIZE, STUDY_SIZE, SceneDraw, scene_draws
