"""Peer worker for benchmarks/train_step.py: transformers' PyTorch BertForPreTraining, one AdamW step per call.

    python benchmarks/_peer_torch.py INPUTS.npz SPEC_JSON

Run by the harness, not by hand. Protocol (one JSON object per stdout line):
  after setup it prints {"event": "ready", ...}; then for each stdin line "run N" it runs N steps and prints
  {"event": "times", "times": [seconds per step], "loss": last loss, ...}; "quit" (or EOF) exits.
The first "run" also reports the total and the MLM loss of step 0 (before any update).
"""
from __future__ import annotations

import json
import resource
import sys
import time


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


def main(inputs_path: str, spec_json: str) -> int:
    spec = json.loads(spec_json)
    import numpy as np
    import torch
    import transformers
    from transformers import BertConfig, BertForPreTraining

    torch.set_num_threads(int(spec["threads"]))
    torch.manual_seed(int(spec["seed"]))
    data = np.load(inputs_path)
    batch = {
        "input_ids": torch.from_numpy(data["input_ids"].astype(np.int64)),
        "token_type_ids": torch.from_numpy(data["token_type_ids"].astype(np.int64)),
        "attention_mask": torch.from_numpy(data["input_mask"].astype(np.int64)),
        "labels": torch.from_numpy(data["mlm_labels"].astype(np.int64)),  # -100 where not masked
        "next_sentence_label": torch.from_numpy(data["sentence_label"].astype(np.int64)),
    }
    config = BertConfig(vocab_size=spec["vocab"], hidden_size=spec["hidden"], num_hidden_layers=spec["layers"],
                        num_attention_heads=spec["heads"], intermediate_size=spec["ffn"],
                        max_position_embeddings=max(512, spec["seq"]))
    model = BertForPreTraining(config)
    model.train()  # dropout 0.1 on, as in the bert_jax step
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec["lr"], betas=(0.9, 0.999), eps=spec["eps"],
                                  weight_decay=spec["weight_decay"])
    emit(event="ready", framework="torch", torch=torch.__version__, transformers=transformers.__version__,
         threads=torch.get_num_threads(), params=sum(p.numel() for p in model.parameters()),
         attn_implementation=getattr(model.config, "_attn_implementation", None))

    first = True
    for line in sys.stdin:
        command = line.split()
        if not command or command[0] == "quit":
            break
        times, loss, mlm_loss = [], float("nan"), None
        for _ in range(int(command[1])):
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            out = model(**batch)
            out.loss.backward()
            optimizer.step()
            times.append(time.perf_counter() - start)  # CPU tensors: every op above has finished here
            loss = float(out.loss.detach())
            if first:
                with torch.no_grad():
                    logits = out.prediction_logits.float()
                    mlm_loss = float(torch.nn.functional.cross_entropy(
                        logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1), ignore_index=-100))
                first_loss, first = loss, False
                emit(event="first", loss0=first_loss, mlm_loss0=mlm_loss)
        # torch has no compiled-memory analysis: the process's peak resident memory (model, optimizer, activations)
        emit(event="times", times=times, loss=loss,
             max_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
