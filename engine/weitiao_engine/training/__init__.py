"""The plain functions the training recipes (recipes/lora_finetune.py, full_finetune.py, dpo.py) share.

A recipe reads top to bottom and calls these; no recipe imports another. One module per concern:

    data                     chat JSONL files -> messages; tokenizer; tokenized training/validation data
    batching                 the (seed, epoch) data order, length grouping, padded (`collate`) and packed (`pack`) batches
    loss                     token log-probabilities with the LM head only where labels are
    sft                      one supervised fine-tuning step: micro-batches forward/backward, clip, optimizer step, metrics
    precision                bf16 on/off/auto for every recipe (by the probe), autocast, bf16-stored frozen weights computed in fp32
    lora                     the LoRA base loader (QLoRA's NF4 included) and adapter setup
    lora_dropout             LoRA's input dropout with a geometric-gap mask
    lora_forward             plain LoRA as one addmm over the base layer's output
    fused_projections        q/k/v and gate/up (with their LoRA) as one matmul each
    packed_attention         attention within each packed sequence, short ones as two batched matmuls
    fused_ops                RMSNorm as one torch kernel in fp32 (where it measured faster), SwiGLU keeping less
    activation_checkpointing gradient checkpointing: when, and full or selective
    optimization             AdamW's weight-decay groups, step counts and the learning-rate schedule
    state                    the counters every run has, signals, the result fields
    rng                      seeding and every RNG state, per rank
    checkpoints              checkpoint directories: write (manifest last), pick the newest that verifies, restore
    manifest                 manifest.json: each file's size and sha256, verified before a resume trusts it
    labels                   label-set validation: score every candidate answer, classification metrics
    evaluation               the validation pass of SFT recipes and the end-of-step schedule (validate, checkpoint, stop)
    early_stopping           patience counting on the validation loss
    step_metrics             the per-step `metrics` event: counters, throughput, ETA
    final_model              `<output_dir>/model` with its weitiao.json lineage
"""
