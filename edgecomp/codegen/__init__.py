"""Code generation: arena planning and rendering of templates/ into a C model and firmware project."""

from edgecomp.codegen.memory import ArenaPlan, plan_arena
from edgecomp.codegen.render import GeneratedProject, generate_project

__all__ = ["ArenaPlan", "GeneratedProject", "generate_project", "plan_arena"]
