#!/usr/bin/env bash
# Installs Debian's Postfix and runs it on loopback, delivering all mail for
# example.org into one Maildir, for the end-to-end test (tests/postfix.rs).
# Prints the environment the test reads. Safe to run again.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
if ! command -v postfix >/dev/null 2>&1; then
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends postfix >/dev/null
fi
[ -f /etc/postfix/main.cf ] || cp /usr/share/postfix/main.cf.debian /etc/postfix/main.cf
getent group 5000 >/dev/null || groupadd -g 5000 vmail
getent passwd 5000 >/dev/null || useradd -u 5000 -g 5000 -M -d /var/mail/vhosts -s /usr/sbin/nologin vmail
mkdir -p /var/mail/vhosts
chown -R 5000:5000 /var/mail/vhosts
# example.org: the readers' inbox. bounces.test: the VERP bounce domain, whose
# reports land in a Maildir for `paperpost bounces ingest --maildir` (the
# pipe's user= could not write a test's temporary database). ghost.test: a
# domain with no mailboxes, whose recipients are accepted and bounced later
# (5.1.1). full.test, busy.test, blocked.test: a full mailbox (5.2.2), a
# temporary failure (4.2.1, bounced at once: no queue lifetime) and a policy
# refusal (5.7.1), each reported later by a DSN.
printf '%s\n' '/@example\.org$/ example.org/inbox/' '/@bounces\.test$/ bounces.test/inbox/' > /etc/postfix/vmailbox
printf '%s\n' 'full.test error:5.2.2 mailbox full' 'busy.test retry:4.2.1 try again later' \
  'blocked.test error:5.7.1 refused by policy' > /etc/postfix/transport
postconf -e \
  "myhostname = paperpost-ci.localdomain" \
  "inet_interfaces = loopback-only" \
  "inet_protocols = ipv4" \
  "mydestination = localhost" \
  "mynetworks = 127.0.0.0/8" \
  "virtual_mailbox_domains = example.org, bounces.test, ghost.test" \
  "transport_maps = texthash:/etc/postfix/transport" \
  "smtpd_reject_unlisted_recipient = no" \
  "maximal_queue_lifetime = 0" \
  "bounce_queue_lifetime = 0" \
  "virtual_mailbox_base = /var/mail/vhosts" \
  "virtual_mailbox_maps = regexp:/etc/postfix/vmailbox" \
  "virtual_uid_maps = static:5000" \
  "virtual_gid_maps = static:5000" \
  "maillog_file = /var/log/postfix.log" \
  "smtpd_client_connection_rate_limit = 0" \
  "default_process_limit = 100"
if postfix status >/dev/null 2>&1; then postfix reload >/dev/null 2>&1; else postfix start >/dev/null 2>&1; fi
for _ in $(seq 1 50); do
  (exec 3<>/dev/tcp/127.0.0.1/25) 2>/dev/null && break
  sleep 0.2
done
echo "PAPERPOST_POSTFIX_SMTP=127.0.0.1:25"
echo "PAPERPOST_POSTFIX_MAILDIR=/var/mail/vhosts/example.org/inbox"
echo "PAPERPOST_POSTFIX_BOUNCES=/var/mail/vhosts/bounces.test/inbox"
