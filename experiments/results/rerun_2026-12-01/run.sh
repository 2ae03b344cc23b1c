#!/usr/bin/env bash
# Full re-runs of the experiments the notes list as not re-run; sequential, timed.
cd /work/main
J=.venv/bin/jdl; P=.venv/bin/python; D=../shared/data/mnist
t() { local name=$1; shift; local s=$(date +%s); "$@" > /tmp/exp/$name.log 2>&1; echo "$name rc=$? secs=$(( $(date +%s) - s ))" >> /tmp/exp/times.txt; }
t vgg_mnist $J train --config vgg_mnist --workdir /tmp/exp/runs/vgg_mnist --config.data_dir=$D
t resnet20_mnist $J train --config resnet20_mnist --workdir /tmp/exp/runs/resnet20_mnist --config.data_dir=$D
t mnist_fast $J train --config mnist_fast --workdir /tmp/exp/runs/mnist_fast --config.data_dir=$D
t wgan_gp_mnist $P experiments/gan_mnist.py --data_dir $D --config wgan_gp_mnist --epochs 30 --workdir /tmp/exp/runs/gan --classifier /tmp/exp/runs/mnist_fast --out /tmp/exp/results/wgan_gp_mnist
t dcgan_mnist $P experiments/gan_mnist.py --data_dir $D --config dcgan_mnist --epochs 5 --workdir /tmp/exp/runs/gan --classifier /tmp/exp/runs/mnist_fast --out /tmp/exp/results/dcgan_mnist
t gan_mnist $P experiments/gan_mnist.py --data_dir $D --config gan_mnist --epochs 30 --workdir /tmp/exp/runs/gan --classifier /tmp/exp/runs/mnist_fast --out /tmp/exp/results/gan_mnist
echo done >> /tmp/exp/times.txt
