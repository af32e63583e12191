"""The board's labels in English and Chinese; a field's help text is the schema's docstring in English,
and its translation (:data:`HELP_ZH`) in the Chinese UI.

A key missing here is shown as itself (an override key such as ``train.eval_steps``
is a fine label: it is what a user would type).
"""

from __future__ import annotations

LANGS = ("en", "zh")

LABELS = {
    # tabs
    "tab.train": ("Train", "训练"),
    "tab.sweep": ("Sweep", "超参搜索"),
    "tab.chat": ("Chat", "对话"),
    "tab.export": ("Export", "导出"),
    "tab.runs": ("Runs", "运行记录"),
    "lang": ("Language", "语言"),
    # train: groups and knobs
    "model": ("Model", "模型"),
    "method": ("Method", "微调方法"),
    "stage": ("Stage", "训练阶段"),
    "data": ("Data", "数据集"),
    "optimizer": ("Optimizer", "优化器"),
    "scheduler": ("LR scheduler", "学习率调节器"),
    "lr": ("Learning rate (lr)", "学习率 (lr)"),
    "epochs": ("Epochs", "训练轮数"),
    "max_steps": ("Max steps", "最大步数"),
    "cutoff_len": ("Cutoff length", "截断长度"),
    "batch_size": ("Batch size", "批处理大小"),
    "grad_accum": ("Gradient accumulation", "梯度累积"),
    "scheduler.warmup_ratio": ("Warmup ratio", "预热比例"),
    "scheduler.warmup_steps": ("Warmup steps", "预热步数"),
    "precision": ("Precision", "计算精度"),
    "rank": ("LoRA rank", "LoRA 秩"),
    "alpha": ("LoRA alpha", "LoRA 缩放系数"),
    "method.dropout": ("LoRA dropout", "LoRA 随机丢弃"),
    "method.target_modules": ("LoRA target modules", "LoRA 作用模块"),
    "method.bits": ("Quantization bits", "量化等级"),
    "method.trainable_layers": ("Trainable layers (freeze)", "可训练层数 (冻结微调)"),
    "data.val_size": ("Validation size", "验证集比例"),
    "data.packing": ("Packing", "序列打包"),
    "data.num_train": ("Built-in task: train examples", "内置任务: 训练样本数"),
    "data.num_eval": ("Built-in task: eval examples", "内置任务: 验证样本数"),
    "data.max_samples": ("Max samples", "最大样本数"),
    "train.logging_steps": ("Logging steps", "日志间隔"),
    "train.eval_steps": ("Eval steps", "验证间隔"),
    "train.save_steps": ("Save steps", "保存间隔"),
    "seed": ("Seed", "随机种子"),
    "extra": ("More overrides (key=value ...)", "其他参数 (key=value ...)"),
    "command": ("Command", "命令"),
    "launch": ("Start", "开始"),
    "stop": ("Stop", "中断"),
    "preview": ("Preview data", "预览数据集"),
    "data_preview": ("Data preview and statistics", "数据预览与统计"),
    "status": ("Status", "状态"),
    "progress": ("Progress", "进度"),
    "loss": ("Loss", "损失"),
    "result": ("Result", "结果"),
    "log": ("Log", "日志"),
    # sweep
    "sweep.intro": ("The sweep runs the Train tab's settings; give a range to each knob to search "
                    "(e.g. `tag(log,interval(1e-4,1e-2))`, `choice(8,16)`, `range(1,4)`) or pick a preset.",
                    "搜索使用训练页的设置; 为要搜索的参数填写范围 (例如 `tag(log,interval(1e-4,1e-2))`, "
                    "`choice(8,16)`, `range(1,4)`), 或选择预设。"),
    "sweep.preset": ("Search-space preset", "搜索空间预设"),
    "hydra.sweeper.n_trials": ("Trials", "试验次数"),
    "hydra.sweeper.n_jobs": ("Slots (trials at once)", "并行槽位"),
    "hydra.sweeper.budget_trial_s": ("Budget (trial-seconds)", "计算预算 (秒)"),
    "hydra.sweeper.pruner": ("Pruner", "剪枝器"),
    "trials": ("Trials", "试验"),
    "best": ("Best so far", "当前最优"),
    # chat
    "chat.source": ("Finished run or export", "已完成的运行或导出"),
    "refresh": ("Refresh", "刷新"),
    "chat.system": ("System prompt", "系统提示词"),
    "chat.box": ("Chat", "对话"),
    "chat.input": ("Message", "输入"),
    "chat.send": ("Send", "发送"),
    "chat.clear": ("Clear", "清空历史"),
    "chat.max_new_tokens": ("Max new tokens", "最大生成长度"),
    # export
    "export.run": ("Run", "运行"),
    "export.dir": ("Export directory", "导出目录"),
    "export.max_shard_size": ("Max shard size", "最大分块大小"),
    "export.dtype": ("Dtype", "导出精度"),
    "export.check": ("Check against base + adapter", "与基座+适配器对比校验"),
    "export.go": ("Export (merge)", "开始导出 (合并)"),
    # runs
    "runs.mlflow_ui": ("MLflow UI address", "MLflow 界面地址"),
    "runs.table": ("Runs in MLflow", "MLflow 中的运行"),
}


# a field's help in the Chinese UI, by override key: every field the board shows has one
# (tests/ftrun/test_board_form.py fails on a field without it); the English is the schema's docstring
HELP_ZH = {
    "model": "基座模型 (model=tiny, qwen2.5-0.5b-instruct, llama3-8b-instruct)。",
    "method": "微调方式 (method=full, freeze, lora, qlora)。",
    "stage": "运行哪个训练阶段 (stage=pt, sft, rm, dpo, kto, ppo)。",
    "data": "训练数据 (data=letters, alpaca, sharegpt, llamafactory)。",
    "optimizer": "优化器 (optimizer=adamw, adamw_8bit, sgd, adafactor)。",
    "scheduler": "学习率调度 (scheduler=cosine, linear, ...)。",
    "lr": "峰值学习率; tiny 模型适合 1e-3, 真实模型配合 LoRA 用 1e-4 到 2e-4 (简写: lr=)。",
    "epochs": "遍历训练数据的轮数。",
    "max_steps": "训练这么多个优化器步后停止 (-1 = 跑完所有轮数)。",
    "cutoff_len": "分词后样本的最大长度; 更长的会被截断, 最后一个回答至少保留一半 (简写: cutoff_len=)。",
    "batch_size": "每个设备的微批大小。",
    "grad_accum": "每个优化器步累积的微批数 (等效批大小 = batch_size x grad_accum x 设备数)。",
    "scheduler.warmup_ratio": "线性预热占全部步数的比例, 取值 [0, 1)。",
    "scheduler.warmup_steps": "线性预热的步数 (按比例预热请用 warmup_ratio)。",
    "precision": "fp32, fp16 (CUDA), bf16 (混合精度) 或 pure_bf16 (bf16 权重, 不保留 fp32 主副本)。",
    "rank": "LoRA 秩 r, 不超过模型的隐藏层维度 (简写: rank=)。",
    "alpha": "LoRA alpha, 通常为 2 x rank; 更新按 alpha/rank 缩放 (rslora 时为 alpha/sqrt(rank)) (简写: alpha=)。",
    "method.dropout": "LoRA 输入上的随机丢弃率。",
    "method.target_modules": "加适配器的模块: [all-linear] 或 [q_proj, v_proj] 这样的模块名。",
    "method.bits": "qlora: 冻结基座的量化位数, 4 或 8。",
    "method.trainable_layers": "freeze: 训练最后多少个解码层。",
    "data.val_size": "留作验证的行: [0, 1) 之间的比例或整数行数 (>= 1); 0 = 不留。",
    "data.packing": "把多个样本打包进每个 cutoff_len 长的行 (样本之间不计算损失)。",
    "data.num_train": "内置任务: 生成的训练样本数。",
    "data.num_eval": "内置任务: 生成的验证样本数 (用另一个随机种子)。",
    "data.max_samples": "最多使用这么多训练行。",
    "train.logging_steps": "每隔这么多步记录训练损失、学习率、梯度范数和每秒 token 数。",
    "train.eval_steps": "每隔这么多步验证一次 (0 = 只在结束时)。",
    "train.save_steps": "每隔这么多步写一个可续训的检查点 (0 = 不写)。",
    "seed": "适配器权重初始化、数据顺序和随机丢弃的随机种子。",
    "hydra.sweeper.n_trials": "研究中想要的试验总数 (完成 + 剪枝), 包括之前运行的试验。",
    "hydra.sweeper.n_jobs": "同时运行的试验槽位数; 一个槽位空出来就立刻开始下一个试验。",
    "hydra.sweeper.budget_trial_s": "计算预算: 研究的试验用满这么多试验秒 (每个试验的墙钟时间之和, 包括之前的运行; "
                                    "正在运行的试验会跑完) 后不再开始新试验。null = 不设预算。",
    "hydra.sweeper.pruner": "median, percentile, successive_halving, hyperband, patient, wilcoxon, threshold, none, "
                            "promotion (在阶梯处暂停, 晋级时从检查点继续); 或 {name: .., <参数>}。",
    "sweep.preset": "sweep=<预设> (ftrun/conf/sweep/); auto: 按已发表的先验给出搜索空间。",
}


def help_text(key: str, lang: str, english: str) -> str:
    """A field's help: the schema's docstring (``english``), or its Chinese in the Chinese UI."""
    return HELP_ZH.get(key, english) if lang == "zh" else english


def label(key: str, lang: str) -> str:
    pair = LABELS.get(key)
    if pair is None:
        return key
    return pair[LANGS.index(lang)] if lang in LANGS else pair[0]
