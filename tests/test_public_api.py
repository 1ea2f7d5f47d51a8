"""The public contract of DESIGN.md: names importable from the package root."""


def test_root_exports():
    import shine_jax
    from shine_jax import BaseModel, Shine

    assert BaseModel.__name__ == "BaseModel" and Shine.__name__ == "Shine"
    for name in ("from_hf", "logits", "generate", "save", "load", "to_hf"):
        assert callable(getattr(BaseModel, name))
    for name in ("load", "from_official", "memory_states", "generate_lora", "logits", "ask", "export_peft",
                 "to_official"):
        assert callable(getattr(Shine, name))
    assert sorted(shine_jax.__all__) == ["BaseModel", "Shine"]
