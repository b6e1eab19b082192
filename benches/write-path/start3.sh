#!/bin/bash
# Part of benches/write-path (see its README).
# start.sh BIN DIR [RUST_LOG]: three replog serve processes on 127.0.0.1:781x
BIN=$1; DIR=$2; LOG=${3:-info}
rm -rf $DIR; mkdir -p $DIR
M="1=127.0.0.1:7911,2=127.0.0.1:7912,3=127.0.0.1:7913"  # peer addresses (client port + 100)
for i in 1 2 3; do
  RUST_LOG=$LOG $BIN serve --id $i --listen 127.0.0.1:781$i --metrics-listen 127.0.0.1:982$i --data-dir $DIR/n$i --initial-members $M --log-format json > $DIR/n$i.log 2>&1 &
  echo $! >> $DIR/pids
done
