#!/usr/bin/env bash
# The CPU-tested paths once on a GPU: the demo (NF4 on CUDA), its merge, check --model, eval, and the
# runner under --fsdp (FSDP2 over one process: NCCL, sharded bf16 LoRA, gathered adapter).
set -u
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1 NO_COLOR=1
D=/tmp/envdoctor-demo-gpu
rm -rf $D $D-fsdp
quiet() { grep -vE "Warning|warn\(|^ *warnings.warn|Loading weights|^.{0,40}step [0-9]+/[0-9]+ "; }
echo "== envdoctor train --demo (GPU)"; python3 -m envdoctor train --demo --output-dir $D 2>&1 | quiet | tail -6
python3 -c "import json; d=json.load(open('$D/run_summary.json')); print({k: d[k] for k in ('device','first_loss','final_loss','val_loss','notes')})"
echo "== envdoctor merge"; python3 -m envdoctor merge $D 2>&1 | quiet | grep -E "verification|merged:|FAIL"
echo "== envdoctor check --model"; python3 -m envdoctor check --model $D/merged --only model 2>&1 | tail -7
echo "== envdoctor eval"; python3 -m envdoctor eval $D 2>&1 | quiet | tail -4
echo "== envdoctor train --fsdp (bf16 LoRA, one process)"
python3 -c "
import yaml; c = yaml.safe_load(open('train/configs/demo.yaml'))
c.update(load_in_4bit=False, adapter='lora', bf16=True, num_epochs=2, datasets=[{'path': '$PWD/train/demo_corpus'}], output_dir='$D-fsdp')
yaml.safe_dump(c, open('/tmp/demo-fsdp.yaml', 'w'))"
python3 -m envdoctor train /tmp/demo-fsdp.yaml --fsdp 2>&1 | quiet | tail -5
ls $D-fsdp/adapter
echo "== the seed's way on the demo: bf16, paged 8-bit AdamW, checkpointing, modules_to_save trained in place"
python3 -c "
import yaml; c = yaml.safe_load(open('train/configs/demo.yaml'))
c.update(bf16=True, optimizer='paged_adamw_8bit', gradient_checkpointing=True, num_epochs=3,
         datasets=[{'path': '$PWD/train/demo_corpus'}], output_dir='$D-bf16')
yaml.safe_dump(c, open('/tmp/demo-bf16.yaml', 'w'))"
rm -rf $D-bf16
python3 -m envdoctor train /tmp/demo-bf16.yaml 2>&1 | quiet | tail -5
python3 -c "import json; d=json.load(open('$D-bf16/run_summary.json')); print({k: d.get(k) for k in ('device','first_loss','final_loss','val_loss','notes')})"
python3 -c "
from safetensors import safe_open
f = safe_open('$D-bf16/adapter/adapter_model.safetensors', 'pt')
print({k: str(f.get_slice(k).get_dtype()) for k in f.keys() if 'lora' not in k})"
echo "== envdoctor merge (bf16 run)"; python3 -m envdoctor merge $D-bf16 2>&1 | quiet | grep -E "verification|merged:|FAIL|rror"
if [ "$(nvidia-smi -L 2>/dev/null | wc -l)" -ge 2 ]; then
  echo "== the same, data parallel over 2 GPUs (NCCL; the in-place parameter is one parameter to DDP)"
  sed "s#$D-bf16#$D-bf16-ddp#" /tmp/demo-bf16.yaml > /tmp/demo-bf16-ddp.yaml; rm -rf $D-bf16-ddp
  python3 -m envdoctor train /tmp/demo-bf16-ddp.yaml --nproc 2 2>&1 | quiet | tail -4
  echo "== envdoctor merge (bf16 DDP run)"; python3 -m envdoctor merge $D-bf16-ddp 2>&1 | quiet | grep -E "verification|merged:|FAIL|rror"
fi
