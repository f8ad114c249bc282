"""ipywidgets panels of the four labs, and the experiments the labs run (pictures and numbers).

    common             cached pipelines and inversions, model defaults, image views, progress, saving outputs
    naive_noising_panel lab 1: ForwardProcessPanel, NaiveEditPanel; forward_process_strip, strength_sweep
    posterior_panel    lab 2: SamplerPanel; sigma_figure, sample_settings, table1 (DDIM Table 1)
    inversion_panel    lab 3: InversionPanel; vae_ceiling, steps_sweep, guidance_sweep, method_comparison
    prompt_to_prompt   lab 4: PromptToPromptPanel; word_maps, examples, run_examples, reweight_strip

Panels only call the diffusion_lab API; every callback is a method (`panel.run()`, what its Run button calls)
that a test can drive: set a control's .value, call button.click(), look at the ImageView's picture.
"""
