#!/usr/bin/env bash
# Build the image (docker/Dockerfile) and push it to Amazon ECR.
#
# Usage: ./build_and_push.sh [--help] [--name NAME] [--tag TAG] [--region REGION] [--platform P] [--no-push]
#                            [-- DOCKER BUILD ARGS...]
#
#   --name NAME      ECR repository / local image name (default: image-classifier)
#   --tag TAG        image tag (default: the git commit, with "-dirty" when the tree has changes);
#                    the image is also tagged "latest"
#   --region REGION  AWS region (default: $AWS_REGION, $AWS_DEFAULT_REGION, then `aws configure get region`)
#   --platform P     the image's platform (default: linux/amd64, what SageMaker's instances run, also when
#                    building on an arm64 machine such as Apple silicon)
#   --no-push        build a local image only (NAME:TAG, NAME:latest); needs no AWS CLI, account or network
#                    to AWS. It leaves .image-uri alone: that file holds the ECR URI the launcher sends to
#                    SageMaker, and a local name there would make jobs fail.
#   -- ARGS          passed to `docker build`, e.g. -- --build-arg BAKE_WEIGHTS=true
#                    or -- --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
#
# With pushing, the account comes from the credentials (`aws sts get-caller-identity`), the repository
# is created when missing (scan on push), and the login is `aws ecr get-login-password | docker login`.
# The ECR image URI is printed and written to .image-uri (the launcher reads it; $IMAGE_URI_FILE overrides
# the path). China regions (cn-*) use the registry domain amazonaws.com.cn. With AWS_ENDPOINT_URL set (an AWS emulator), the AWS calls go there and the docker login
# and push are skipped, because no registry stands behind an emulated ECR.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

name="image-classifier"
tag=""
region=""
platform="linux/amd64"
push=true
build_args=()

die() {
    echo "error: $*" >&2
    exit 1
}

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
}

while (($#)); do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --name) [[ $# -ge 2 ]] || die "--name needs a value"; name=$2; shift 2 ;;
        --tag) [[ $# -ge 2 ]] || die "--tag needs a value"; tag=$2; shift 2 ;;
        --region) [[ $# -ge 2 ]] || die "--region needs a value"; region=$2; shift 2 ;;
        --platform) [[ $# -ge 2 ]] || die "--platform needs a value"; platform=$2; shift 2 ;;
        --no-push) push=false; shift ;;
        --) shift; build_args=("$@"); break ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done

# ECR repository names: lower case, digits, and . _ - / separators.
[[ $name =~ ^[a-z0-9]+([._/-][a-z0-9]+)*$ ]] || die "--name '$name' is not a valid repository name (lower case, digits, . _ - /)"

command -v docker >/dev/null || die "docker not found: install Docker (Debian: apt-get install docker.io)"
docker info >/dev/null 2>&1 || die "the docker engine is not running or not reachable (try: sudo dockerd &, or start Docker Desktop)"

if [[ -z $tag ]]; then
    if commit=$(git rev-parse --short=12 HEAD 2>/dev/null); then
        tag=$commit
        [[ -z $(git status --porcelain 2>/dev/null) ]] || tag="$commit-dirty"
    else
        tag=$(date -u +%Y%m%d-%H%M%S)
    fi
fi
[[ $tag =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "--tag '$tag' is not a valid docker tag"

endpoint_args=()
registry=""
if $push; then
    command -v aws >/dev/null || die "the AWS CLI is not installed (https://aws.amazon.com/cli/, or Debian: apt-get install awscli); --no-push builds without it"
    if [[ -n ${AWS_ENDPOINT_URL:-} ]]; then
        endpoint_args=(--endpoint-url "$AWS_ENDPOINT_URL")
    fi
    region=${region:-${AWS_REGION:-${AWS_DEFAULT_REGION:-$(aws configure get region 2>/dev/null || true)}}}
    [[ -n $region ]] || die "no AWS region: pass --region, set AWS_REGION, or run 'aws configure'"
    account=$(aws "${endpoint_args[@]}" --region "$region" sts get-caller-identity --query Account --output text 2>&1) ||
        die "no valid AWS credentials (aws sts get-caller-identity: ${account##*$'\n'})"
    domain="amazonaws.com"
    [[ $region != cn-* ]] || domain="amazonaws.com.cn"
    registry="$account.dkr.ecr.$region.$domain"
    if ! aws "${endpoint_args[@]}" --region "$region" ecr describe-repositories --repository-names "$name" >/dev/null 2>&1; then
        echo "creating ECR repository $name in $region (scan on push)"
        aws "${endpoint_args[@]}" --region "$region" ecr create-repository --repository-name "$name" \
            --image-scanning-configuration scanOnPush=true >/dev/null
    fi
    image="$registry/$name"
else
    image=$name
fi

echo "building $image:$tag for $platform"
docker build --platform "$platform" -f docker/Dockerfile -t "$image:$tag" -t "$image:latest" \
    ${build_args[@]+"${build_args[@]}"} .

if $push; then
    if [[ -n ${AWS_ENDPOINT_URL:-} ]]; then
        password=$(aws "${endpoint_args[@]}" --region "$region" ecr get-login-password)
        [[ -n $password ]] || die "ecr get-login-password returned nothing"
        echo "AWS_ENDPOINT_URL is set ($AWS_ENDPOINT_URL): got an ECR login password, but SKIPPING docker login and push (no registry behind an emulated ECR)"
    else
        aws --region "$region" ecr get-login-password | docker login --username AWS --password-stdin "$registry"
        docker push "$image:$tag"
        docker push "$image:latest"
    fi
fi

if $push; then
    echo "$image:$tag" >"${IMAGE_URI_FILE:-.image-uri}"
else
    echo "local image only: .image-uri is left as it is (SageMaker needs an ECR image; local runs use $image:latest)"
fi
echo "$image:$tag"
