# An agent-shaped image for `krbottle bench prepare` and the oracle tests: a node_modules-like
# tree of many small files, a layer that changes the owner of that whole tree (so the engine
# stores it twice), deletions (whiteouts, an opaque directory), and a last layer that a rebuild
# changes (STAMP). FILES and KB set the size: tests keep it small, the bench makes it big.
ARG BASE=krbottle/debian-base:bookworm
FROM ${BASE}
ARG FILES=2000
ARG KB=4
RUN useradd -u 1000 -m -s /bin/sh agent \
 && perl -e 'my ($n, $kb) = @ARGV; srand(14); my $block = join("", map { chr(33 + int(rand(90))) } 1 .. 1024); mkdir "/opt/agent" or die; mkdir "/opt/agent/node_modules" or die; for my $i (0 .. $n - 1) { my $p = int($i / 40); my $d = "/opt/agent/node_modules/pkg$p"; if ($i % 40 == 0) { mkdir $d or die; mkdir "$d/lib" or die; open(my $j, ">", "$d/package.json") or die; print $j "{\"name\":\"pkg$p\",\"version\":\"1.0.$p\"}\n"; close $j; symlink("lib/m$i.js", "$d/index.js") or die; } open(my $f, ">", "$d/lib/m$i.js") or die; print $f "// module $i\n", $block x $kb; close $f; }' "$FILES" "$KB" \
 && mkdir -p /opt/agent/cache/old && echo stale > /opt/agent/cache/old/entry \
 && ln /opt/agent/node_modules/pkg0/lib/m0.js /opt/agent/hard-link.js
RUN chown -R 1000:1000 /opt/agent /home/agent \
 && rm -rf /opt/agent/node_modules/pkg1 /usr/share/doc/* /usr/share/man \
 && rm -rf /opt/agent/cache && mkdir /opt/agent/cache && echo fresh > /opt/agent/cache/entry
ARG STAMP=1
RUN echo "$STAMP" > /opt/agent/VERSION && echo "build $STAMP" >> /etc/motd
