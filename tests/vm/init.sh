#!/bin/sh
# /init of the emulated machine: load KVM for the emulated AMD SVM CPU, run the cases, power off.
export PATH=/bin:/sbin:/usr/bin:/opt/krbottle/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
ip link set lo up
# kvm for the hypervisor; overlay for the bottles' writable roots (krbottle start).
for m in irqbypass kvm ccp kvm-amd overlay; do insmod /mods/$m.ko 2>/dev/null; done
echo "KRB-HARNESS-START $(cut -d' ' -f1 /proc/uptime)"
# The guests' root filesystems, made by krbottle itself from the saved images.
for img in /images/*.tar; do
    name=$(basename "$img" .tar)
    if krbottle -q image unpack "$img" "/rootfs/$name" --ownership root; then
        echo "KRB-RESULT unpack_$name pass $(cut -d' ' -f1 /proc/uptime)"
    else
        echo "KRB-RESULT unpack_$name fail $(cut -d' ' -f1 /proc/uptime)"
    fi
    rm -f "$img"
done
sh /cases.sh
echo "KRB-HARNESS-DONE $(cut -d' ' -f1 /proc/uptime)"
poweroff -f
