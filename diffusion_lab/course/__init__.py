"""The course built on the labs: exercise checks with feedback (`checks`), the student / instructor / autograder
versions of the labs (`build`) and grading of submissions (`grade`); `python -m diffusion_lab course --help`."""
