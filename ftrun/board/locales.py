"""The board's labels in English and Chinese; a field's help text is the schema's docstring (English).

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


def label(key: str, lang: str) -> str:
    pair = LABELS.get(key)
    if pair is None:
        return key
    return pair[LANGS.index(lang)] if lang in LANGS else pair[0]
